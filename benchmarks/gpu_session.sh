#!/usr/bin/env bash
# The GPU measurements of issue 7 as one prepared run, for a lent GPU machine whose image already
# holds JAX with CUDA, flax, optax, orbax, PyTorch and the rest, but not grain, ml-collections or
# nibabel: those travel as wheels that `make device-wheels` puts in .whl/ (carry: [".whl"]).
#
#   device run (repo root):  bash benchmarks/gpu_session.sh        timeout_s=600, carry=[".whl"]
#   dry run on a CPU here:   GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh
#
# Phases run in order, each under its own time limit so that one slow phase (a long compile)
# cannot eat the lease; each writes its log, and the benchmarks their .md/.json tables, to $OUT
# (benchmarks/results/gpu-session here when OUT is unset). The limits add up to 540 s, inside
# one 600 s device call.
set -u
OUT=${OUT:-benchmarks/results/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${GPU_SESSION_DRY:-0}" = 1 ]; then
  # Same commands, tiny sizes, on this machine's venv: checks the script, not the numbers.
  PY=.venv/bin/python
  VS="--batch=2 --sizes=64 --steps=2 --torch_modes=eager"
  MODELS="--steps=2 --batch=2 --only=Buda,unext"
  LOOP="--config.data.batch_size=2 --config.data.image_size=64 --config.data.num_workers=0 --bench_steps=3"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed: run make device-wheels"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  VS="--batch=16 --sizes=256 --dtype=bfloat16 --torch_modes=eager,compile --steps=50"
  MODELS="--steps=50 --batch=16 --dtype=bfloat16 --only=Buda,unext,unetpp_efficientnet_b3,unet3d"
  LOOP="--bench_steps=50"
fi

phase() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  echo "   exit $?; last lines:"
  tail -n 15 "$OUT/$name.log" | sed 's/^/   /'
}

phase env 30 sh -c "nvidia-smi -L 2>/dev/null; $PY -c 'import jax, flax, optax, orbax.checkpoint, grain, torch; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__); print(jax.devices())'"
# A few model and train-step tests first: API drift in the image's newer JAX shows up here.
phase smoke 90 $PY -m pytest -q -x -p no:cacheprovider tests/test_models.py -k "unet and not efficientnet and not 3d" tests/test_train.py
phase vs_torch 210 $PY benchmarks/vs_torch.py $VS --out="$OUT"
phase models 150 $PY benchmarks/models.py $MODELS --out="$OUT"
# The real loop (synthetic files in the LGG format: the real reader, Grain workers, augmentation,
# device prefetch); reports the input-wait share of the step.
phase loop_unet 60 $PY -m jaxseg bench --config=configs/lgg_unet.py --config.data.root= --what=loop $LOOP
echo "== done $(date -u +%H:%M:%S)"
