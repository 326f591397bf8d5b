#!/usr/bin/env bash
# The GPU measurements of issue 7 as one prepared run, for a lent GPU machine whose image already
# holds JAX with CUDA, flax, optax, orbax, PyTorch and the rest, but not grain, ml-collections or
# nibabel: those travel as wheels that `make device-wheels` puts in .whl/ (carry: [".whl"]).
#
#   device run (repo root):  bash benchmarks/gpu_session.sh [PHASE ...]   timeout_s=600,
#                            carry=[".whl"]; JAXSEG_COMMIT=<hash> names the commit in the tables
#   dry run on a CPU here:   GPU_SESSION_DRY=1 bash benchmarks/gpu_session.sh [PHASE ...]
#
# Phases (default: gate loop_gi models, 560 s at most with env: the GI loop with its loop-over-
# step ratio and the registry models no GPU run has measured yet; vs_unet, vs_unext, loop,
# profile, flags, data and bn_act fit a second call):
#   gate      one tiny train step on the GPU; a failure ends the run at once, so that most of the
#             lease is left for a fixed rerun (API drift in the image's newer JAX shows here)
#   vs_unet   benchmarks/vs_torch.py, UNet, 256 px, batch 16, bfloat16: torch eager AMP with
#   vs_unext  channels_last, and torch.compile
#   loop      the real loop on synthetic LGG files (reader, Grain workers, augmentation, device
#             prefetch) with each of LOOP_WORKERS worker counts (0: in the training process):
#             input-wait share of the step, the prefetch thread's wait on Grain and device puts,
#             and the loop's step time over the same step run without the loader
#   loop_gi   the same for configs/gi_cnn_scratch.py (CLAHE on the host, its output cached on
#             disk; warps, noise and blur in the step, data.augment.on_device=auto) with each of
#             GI_WORKERS worker counts, then GI_WORKERS' last count without the sample cache
#   data      benchmarks/data.py: the LGG and GI input pipelines alone by worker count
#   models    benchmarks/models.py over MODELS_ONLY (compile, step, MFU, memory)
#   profile   a jax.profiler trace of 20 UNet bfloat16 steps: step_profile.py's kernel table, and
#             the trace and HLO in unet_trace/ (step_profile.py --from_trace reads them here)
#   flags     the UNet bfloat16 step (synced and unsynced) under each XLA flag set of FLAG_SETS
#   bn_act    layers_ab.py's bn_relu on the GPU: nn.BatchNorm + activation against the fused op
#             (batch_norm.batch_norm_act, measured on CPUs only so far), UNet 256 px batch 16,
#             ResUNet 128, UNet++ / EfficientNet-B3 224, in fresh processes
# Each phase runs under its own time limit so that one slow phase (a long compile) cannot eat the
# lease. All output goes to $OUT/session.log and the tables (.md/.json, rewritten after each
# row) to $OUT (benchmarks/results/gpu-session here when OUT is unset): no more than the 8 files
# that come back from a device call.
set -u
OUT=${OUT:-benchmarks/results/gpu-session}
mkdir -p "$OUT"
LOG=$OUT/session.log
export PYTHONUNBUFFERED=1 OUT
# The suite rows (benchmarks/models.py) without GPU numbers yet: UNet, UNeXt, UNet++ with
# EfficientNet-B3 and the 3-D UNet were measured on the H200 / H100 (BUILD.md; at batch 16, the
# 3-D UNet on a 64^3 crop, before the suite took each project's config and batch).
MODELS_ONLY=${MODELS_ONLY:-vgg16,resnet50,resunet,GI scratch,unet_efficientnet_b3,BraTS 2-D}
LOOP_WORKERS=${LOOP_WORKERS:-0 4 8}
GI_WORKERS=${GI_WORKERS:-6 12}
# The loop sweep compiles the same UNet step once per worker count: later ones hit this cache.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxseg-xla-cache}
if [ "${GPU_SESSION_DRY:-0}" = 1 ]; then
  # Same commands, tiny sizes, on this machine's venv: checks the script, not the numbers.
  PY=.venv/bin/python
  VS="--batch=2 --sizes=64 --steps=2 --torch_modes=eager"
  MODELS="--steps=2 --batch=2"
  MODELS_ONLY=Buda,unext
  LOOP_WORKERS="0 1"
  GI_WORKERS="0 1"
  SMALL="--config.data.batch_size=2 --config.data.image_size=64 --bench_steps=3"
  DATA="--configs=lgg_unet --workers=0,1 --batches=3 --step_configs= --steps=1"
  AB="--sizes=64 --batch=2 --steps=1"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed: run make device-wheels"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  VS="--batch=16 --sizes=256 --dtype=bfloat16 --torch_modes=eager,compile --steps=50"
  MODELS="--steps=50 --dtype=bfloat16"  # each project's batch
  SMALL="--config.model.dtype=bfloat16 --bench_steps=200"
  DATA="--configs=lgg_unet,gi_cnn_scratch --workers=4,12 --batches=40 --step_configs="
  AB="--sizes=256 --batch=16 --steps=30"
fi
export PY SMALL LOOP_WORKERS GI_WORKERS

phase() {  # name, seconds, command... -> the command's exit status
  local name=$1 limit=$2 rc
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
  if [ "$(type -t "$1")" = function ]; then  # timeout runs programs, not shell functions
    timeout "$limit" bash -c "$(declare -f); $*" >"$OUT/$name.tmp" 2>&1  # with every function
  else
    timeout "$limit" "$@" >"$OUT/$name.tmp" 2>&1
  fi
  rc=$?
  cat "$OUT/$name.tmp" >>"$LOG"
  echo "   exit $rc; last lines:"
  grep -Ev "^ *$|^[IW][0-9]{4} " "$OUT/$name.tmp" | tail -n 12 | cut -c1-300 | sed 's/^/   /'
  rm -f "$OUT/$name.tmp"
  return $rc
}

loop_sweep() {  # config, worker counts, extra flags...
  local config=$1 workers=$2 w
  shift 2
  for w in $workers; do
    $PY -m jaxseg bench --config="configs/$config.py" --config.data.root= --what=loop \
      --config.data.num_workers="$w" $SMALL "$@" || return
  done
}

gi_loops() {  # the GI recipe as configured (warps on the device, samples cached), then with
  # GI_WORKERS' last count and no sample cache, as the earlier GPU runs read it (7 % input wait)
  loop_sweep gi_cnn_scratch "$GI_WORKERS" --bench_steps=60 &&
    loop_sweep gi_cnn_scratch "${GI_WORKERS##* }" --bench_steps=60 --config.data.sample_cache=
}

# The UNet step under XLA flag sets (FLAG_SETS, ';'-separated, "-" = none): CUDA-graph command
# buffers are the XLA lever for the launch gaps (idle 22 % of the synced step on the H200).
FLAG_SETS=${FLAG_SETS:-"-;--xla_gpu_enable_command_buffer=;--xla_gpu_enable_command_buffer=+CUDNN,+CUSTOM_CALL"}
export FLAG_SETS
flags_sweep() {
  local f sets
  IFS=';' read -ra sets <<<"$FLAG_SETS"
  for f in "${sets[@]}"; do
    [ "$f" = - ] && f=
    echo "XLA_FLAGS extra: ${f:-none}"
    # XLA reads a non-empty XLA_FLAGS that does not start with "--" as a file name (" " failed).
    (if [ -n "$f" ]; then export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$f"; fi
     $PY -m jaxseg bench --config=configs/lgg_unet.py --config.data.root= --what=step $SMALL) \
      || echo "(failed)"
  done
}

profile_unet() {
  local trace=/tmp/jaxseg-trace
  rm -rf "$trace"
  $PY -m jaxseg bench --config=configs/lgg_unet.py --config.data.root= --what=step \
    $SMALL --bench_steps=20 --profile="$trace" || return
  # The kernel table (benchmarks/step_profile.py, device kernels joined to the HLO by hlo_op),
  # and the trace and HLO themselves, one folder down (deeper files do not come back), for
  # reading again here with --from_trace.
  $PY benchmarks/step_profile.py --from_trace="$trace" --steps=20 --out="$OUT" || return
  mkdir -p "$OUT/unet_trace"
  find "$trace" -name '*.trace.json.gz' -exec cp {} "$OUT/unet_trace/unet_step.trace.json.gz" \;
  cp "$trace/train_step.hlo.txt" "$OUT/unet_trace/"
  ls -l "$OUT/unet_trace"
}

[ $# -gt 0 ] || set -- gate loop_gi models
phase env 20 sh -c "nvidia-smi -L 2>/dev/null; $PY -c 'import jax, flax, optax, orbax.checkpoint, grain, torch; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__); print(jax.devices())'"
for p in "$@"; do
  case $p in
    gate)
      phase gate 40 $PY -c "
from jaxseg.bench import bench_step
from jaxseg.config import default_config
c = default_config(); c.model.name, c.model.features = 'unet', 8
c.data.image_size, c.data.batch_size = 64, 2
print(bench_step(c, steps=3, warmup=1))" || { echo "== gate failed: stopping"; exit 1; } ;;
    vs_unet) phase vs_unet 150 $PY benchmarks/vs_torch.py --models=unet $VS --out="$OUT" ;;
    vs_unext) phase vs_unext 150 $PY benchmarks/vs_torch.py --models=unext $VS --out="$OUT" ;;
    loop) phase loop 150 loop_sweep lgg_unet "'$LOOP_WORKERS'" ;;
    loop_gi) phase loop_gi 200 gi_loops ;;
    data) phase data 70 $PY benchmarks/data.py $DATA --out="$OUT" ;;
    models) phase models ${MODELS_LIMIT:-300} $PY benchmarks/models.py $MODELS --only="$MODELS_ONLY" --out="$OUT" ;;
    profile) phase profile 60 profile_unet ;;
    flags) phase flags 120 flags_sweep ;;
    bn_act) phase bn_act 200 $PY benchmarks/layers_ab.py --changes=bn_relu $AB ;;
    *) echo "unknown phase $p"; exit 2 ;;
  esac
done
echo "== done $(date -u +%H:%M:%S)"
