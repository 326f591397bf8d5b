#!/usr/bin/env bash
# The GPU measurements of issue 7 as one prepared run, for a lent GPU machine whose image already
# holds JAX with CUDA, flax, optax, orbax, PyTorch and the rest, but not grain, ml-collections or
# nibabel: those travel as wheels that `make device-wheels` puts in .whl/ (carry: [".whl"]).
#
#   device run (repo root):  bash benchmarks/gpu_session.sh        timeout_s=600, carry=[".whl"]
#   dry run on a CPU here:   GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh
#
# Phases run in order, each under its own time limit so that one slow phase (a long compile)
# cannot eat the lease. A first gate (one tiny train step on the GPU) ends the run at once when
# JAX or jaxseg fails there, so that most of the lease is left for a fixed rerun. All output
# goes to $OUT/session.log and the tables (.md/.json, rewritten after each row) to $OUT
# (benchmarks/results/gpu-session here when OUT is unset): 7 files, under the 8 that come back.
# The limits add up to 530 s, inside one 560 s device call.
set -u
OUT=${OUT:-benchmarks/results/gpu-session}
mkdir -p "$OUT"
LOG=$OUT/session.log
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
  MODELS="--steps=50 --batch=16 --dtype=bfloat16 --only=Buda,unext,unet3d,unetpp_efficientnet_b3"
  LOOP="--bench_steps=50"
fi

phase() {  # name, seconds, command... -> the command's exit status
  local name=$1 limit=$2 rc
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
  timeout "$limit" "$@" >"$OUT/$name.tmp" 2>&1
  rc=$?
  cat "$OUT/$name.tmp" >>"$LOG"
  echo "   exit $rc; last lines:"
  grep -Ev "^ *$|^[IW][0-9]{4} " "$OUT/$name.tmp" | tail -n 12 | cut -c1-300 | sed 's/^/   /'
  rm -f "$OUT/$name.tmp"
  return $rc
}

phase env 20 sh -c "nvidia-smi -L 2>/dev/null; $PY -c 'import jax, flax, optax, orbax.checkpoint, grain, torch; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__); print(jax.devices())'"
# API drift in the image's newer JAX / flax / orbax shows up here, in seconds, not minutes in.
phase gate 60 $PY -c "
from jaxseg.bench import bench_step
from jaxseg.config import default_config
c = default_config(); c.model.name, c.model.features = 'unet', 8
c.data.image_size, c.data.batch_size = 64, 2
print(bench_step(c, steps=3, warmup=1))" || { echo "== gate failed: stopping"; exit 1; }
phase vs_unet 150 $PY benchmarks/vs_torch.py --models=unet $VS --out="$OUT"
phase vs_unext 150 $PY benchmarks/vs_torch.py --models=unext $VS --out="$OUT"
# The real loop (synthetic files in the LGG format: the real reader, Grain workers, augmentation,
# device prefetch); reports the input-wait share of the step.
phase loop_unet 60 $PY -m jaxseg bench --config=configs/lgg_unet.py --config.data.root= --what=loop $LOOP
phase models 90 $PY benchmarks/models.py $MODELS --out="$OUT"
echo "== done $(date -u +%H:%M:%S)"
