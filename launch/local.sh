#!/usr/bin/env bash
# N jaxseg processes on this machine, joined by jax.distributed over 127.0.0.1.
#   NPROC=2 launch/local.sh train --config=configs/demo.py --workdir=runs/mp
# On a GPU machine each process sees one GPU (CUDA_VISIBLE_DEVICES=i); on a CPU-only machine
# each process gets CPU_DEVICES fake CPU devices (default 1). If any process fails, all stop.
set -euo pipefail
NPROC=${NPROC:?set NPROC to the number of processes}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
# The command to run (word-split, so "python -m jaxseg.cli" works); default: the repo's venv.
if [ -z "${JAXSEG:-}" ]; then
  JAXSEG=$(dirname "$0")/../.venv/bin/jaxseg
  [ -x "$JAXSEG" ] || JAXSEG=jaxseg
fi
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for ((i = 0; i < NPROC; i++)); do
  if command -v nvidia-smi >/dev/null 2>&1; then export CUDA_VISIBLE_DEVICES=$i; else
    export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${CPU_DEVICES:-1}"; fi
  $JAXSEG "$@" --coordinator_address="127.0.0.1:$PORT" --num_processes="$NPROC" \
    --process_id="$i" &
  pids+=($!)
done
# The first process to fail stops the others (they would wait for it in a collective forever).
status=0
for ((n = 0; n < NPROC; n++)); do
  wait -n || { status=$?; echo "launch/local.sh: a process failed (exit $status); stopping all" >&2; break; }
done
[ $status -eq 0 ] && trap - EXIT
exit $status
