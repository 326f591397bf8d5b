"""`jaxseg bench`: how fast the compiled train step and the whole loop run on this machine.

- step: the jitted train step on a device-resident random batch; compile time, FLOPs per step
  (XLA cost analysis), median and spread of the step time over N synced steps after warm-up,
  model FLOPs utilisation against the device's peak (jaxseg.hardware), and memory: XLA's
  buffer assignment for the step, and the device's own peak where it reports one (GPU, TPU).
- loop: the real Grain pipeline with augmentation feeding the step through the device
  prefetcher, N steps, wall-clock images/s and the fraction of time spent waiting for input;
  then N steps of the same step on the last batch with no loader, and the loop's step time over
  that one (1.00x: the device never waited for input).
- data: the training input pipeline alone (reading, decoding, the host's part of the config's
  augmentation recipe, batching) with the config's worker count: samples/s and samples/s per
  worker core. Where data.augment.on_device resolves to the device (GPUs, TPUs), the warps,
  noise and blur are in the step, so only `loop` sees their cost.
Results print as one line each and return as dicts (benchmarks/ collects them into tables).
Without a `data.root`, step, loop and data run on synthetic files in the config's format.
"""

import os
import subprocess
import tempfile
import time

import jax
import numpy as np

from jaxseg import hardware, models
from jaxseg.data import pipeline
from jaxseg.models import onednn
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


def git_commit() -> str:
  """The commit the benchmark tables name: $JAXSEG_COMMIT where set (a copy of the tree without
  its .git, as on a lent GPU machine), else git's short hash, else "unknown"."""
  if os.environ.get("JAXSEG_COMMIT"):
    return os.environ["JAXSEG_COMMIT"]
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
  except OSError:
    return "unknown"
  return out.stdout.strip() or "unknown"


def _random_batch(exp: Experiment, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  shapes = exp.abstract_batch()
  batch = {"image": rng.normal(size=shapes["image"].shape).astype(np.float32)}
  if exp.config.data.task == "multiclass":
    batch["mask"] = rng.integers(0, exp.config.data.num_classes,
                                 shapes["mask"].shape).astype(np.uint8)
  else:
    batch["mask"] = (rng.random(shapes["mask"].shape) < 0.2).astype(np.uint8)
  return jax.device_put(batch, exp.batch_sharding)


def compiled_step(config) -> tuple:
  """What the step benchmarks time: (experiment, initial state, accumulator, the compiled train
  step, compile seconds, model FLOPs per step, a random batch on the devices)."""
  exp = Experiment(config, workdir="")
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
  compiled, compile_s, flops = exp.compile_train_step(state, acc)
  return exp, state, acc, compiled, compile_s, flops, _random_batch(exp)


def bench_step(config, steps: int = 50, warmup: int = 3, profile_dir: str | None = None,
               unsynced_steps: int | None = None) -> dict:
  """Times `steps` synced steps, then `unsynced_steps` (default `steps`) back to back.

  With `profile_dir`, the timed steps are also recorded as a jax.profiler trace there
  (open it with TensorBoard's profile plugin or Perfetto), beside the compiled step's HLO as
  train_step.hlo.txt: the trace names each kernel after its HLO instruction
  (benchmarks/step_profile.py joins the two)."""
  _, state, acc, compiled, compile_s, flops, batch = compiled_step(config)
  hlo = compiled.as_text()
  if profile_dir:
    os.makedirs(profile_dir, exist_ok=True)
    with open(os.path.join(profile_dir, "train_step.hlo.txt"), "w") as f:
      f.write(hlo)
  for _ in range(warmup):
    state, acc = compiled(state, batch, acc)
  jax.block_until_ready(state)
  times = []
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
  try:
    for _ in range(steps):
      t0 = time.perf_counter()
      state, acc = compiled(state, batch, acc)
      jax.block_until_ready((state, acc))
      times.append(time.perf_counter() - t0)
  finally:
    if profile_dir:
      jax.profiler.stop_trace()
  # As the training loop runs them: back to back, one sync at the end, so the host's dispatch of
  # a step overlaps the device's work on the one before (the synced times above include both).
  unsynced_steps = steps if unsynced_steps is None else unsynced_steps
  t0 = time.perf_counter()
  for _ in range(unsynced_steps):
    state, acc = compiled(state, batch, acc)
  jax.block_until_ready((state, acc))
  unsynced = (time.perf_counter() - t0) / unsynced_steps
  t = np.array(times)
  med = float(np.median(t))
  dtype = models.dtype_name(config.model.dtype)
  peak, peak_source = hardware.peak_tflops(dtype)
  n_dev = jax.device_count()
  mem = compiled.memory_analysis()
  stats = jax.devices()[0].memory_stats() or {}
  return {"what": "step", "model": config.model.name, "device": jax.devices()[0].device_kind,
          "devices": n_dev, "batch": config.data.batch_size,
          "image_size": config.data.image_size, "dtype": dtype,
          "convolutions": onednn.convolutions_in(hlo, config.model.conv_impl),
          "compile_s": compile_s, "ms_per_step": 1e3 * med,
          "ms_p10": 1e3 * float(np.percentile(t, 10)), "ms_p90": 1e3 * float(np.percentile(t, 90)),
          "images_per_s": config.data.batch_size / med,
          "ms_per_step_unsynced": 1e3 * unsynced,
          "images_per_s_unsynced": config.data.batch_size / unsynced,
          "gflop_per_step": flops / 1e9,
          "gflop_per_s": flops / med / 1e9,
          # Model FLOPs count the whole (global) step; the peak is per device.
          "mfu": flops / med / (peak * 1e12 * n_dev), "peak_tflops": peak,
          "peak_source": peak_source,
          "xla_step_mb": (mem.argument_size_in_bytes + mem.output_size_in_bytes
                          + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20,
          "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
          "steps": steps}


def _synthetic_root(config) -> str:
  d = config.data
  if d.source == "decathlon":  # volumes of the configured crop, so crop and cache cost as real
    depth, side = (d.crop[0], d.crop[1]) if d.crop else (32, 64)
    return f"synthetic:2:{side}:{depth}"
  return f"synthetic:8:{d.image_size}:16"


def _train_source(config, workdir: str):
  """(config, experiment, training source) for a benchmark: the config's data, or synthetic
  files in its format (all cases in the training split) when it names none. Synthetic data and
  the split go to `workdir`; no checkpoints are written."""
  config = config.copy_and_resolve_references()
  if not config.data.root:
    config.data.root = _synthetic_root(config)
    config.data.split.val = config.data.split.test = 0.0
    if config.data.sample_cache == "auto":  # entries of throw-away files go with them
      config.data.sample_cache = os.path.join(workdir, "samples")
  exp = Experiment(config, workdir="")
  exp.workdir = workdir
  return config, exp, exp.sources()["train"]


def bench_data(config, batches: int = 20, warmup: int = 2, workdir: str | None = None) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    config, exp, source = _train_source(config, workdir or tmp)
    it = iter(pipeline.train_dataset(source, config.data, config.seed))
    # Worker start-up and first-read caches are not throughput, nor are the batches each worker
    # buffered while the others started (on an H200 host, 2026-11-26, 40 batches read after two
    # gave 2436 samples/s with 4 workers while the training loop drew 937).
    for _ in range(warmup + pipeline.buffered_batches(config.data)):
      next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    total = time.perf_counter() - t0
  n = batches * pipeline.local_batch_size(config.data.batch_size)
  workers = config.data.num_workers
  return {"what": "data", "source": config.data.source, "batch": config.data.batch_size,
          "image_size": config.data.image_size, "workers": workers,
          "sample_cache": bool(config.data.sample_cache),
          "samples_per_s": n / total, "samples_per_s_per_core": n / total / max(workers, 1),
          "batches": batches}


def bench_loop(config, steps: int = 50, warmup: int = 3, workdir: str | None = None) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    config, exp, source = _train_source(config, workdir or tmp)
    state = exp.init_state()
    acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
    compiled, _, _ = exp.compile_train_step(state, acc,
                                            pipeline.image_dtype(source, config.data))
    batches = pipeline.DevicePrefetcher(
        iter(pipeline.train_dataset(source, config.data, config.seed)), exp.batch_sharding)
    try:
      # Past the batches the workers buffered while starting, as in bench_data.
      for _ in range(warmup + pipeline.buffered_batches(config.data)):
        state, acc = compiled(state, next(batches)[0], acc)
      jax.block_until_ready(state)
      before = dict(batches.timings)
      wait, t0 = 0.0, time.perf_counter()
      for _ in range(steps):
        tw = time.perf_counter()
        batch, _ = next(batches)
        wait += time.perf_counter() - tw
        state, acc = compiled(state, batch, acc)
      jax.block_until_ready((state, acc))
      total = time.perf_counter() - t0
      loader = {k: batches.timings[k] - before[k] for k in before}
      # The same step on the last batch, back to back, with no loader in the way: the loop's
      # step time over this one says whether the input held the device up. The training thread
      # can also wait on the loader while the device still works through steps it queued, so
      # the input-wait fraction alone overstates the input's cost on accelerators.
      t1 = time.perf_counter()
      for _ in range(steps):
        state, acc = compiled(state, batch, acc)
      jax.block_until_ready((state, acc))
      alone = (time.perf_counter() - t1) / steps
    finally:
      batches.close()
  per_batch = lambda k: 1e3 * loader[k] / max(loader["batches"], 1)  # noqa: E731
  return {"what": "loop", "model": config.model.name, "batch": config.data.batch_size,
          "image_size": config.data.image_size, "workers": config.data.num_workers,
          "augment_on": "device" if pipeline.augment_on_device(config.data.augment) else "host",
          "sample_cache": bool(config.data.sample_cache),
          "images_per_s": steps * config.data.batch_size / total,
          "ms_per_step": 1e3 * total / steps, "input_wait": wait / total, "steps": steps,
          "ms_per_step_alone": 1e3 * alone, "loop_over_step": total / steps / alone,
          # The prefetch thread, per batch: waiting on Grain's workers / putting on the devices.
          "loader_read_ms": per_batch("read_s"), "loader_transfer_ms": per_batch("transfer_s")}


def run_bench(config, what: str = "all", steps: int = 50, workdir: str | None = None,
              profile_dir: str | None = None) -> list:
  results = []
  if what in ("step", "all"):
    r = bench_step(config, steps, profile_dir=profile_dir)
    print(f"step  | {r['model']} b{r['batch']} {r['image_size']}px {r['dtype']} on "
          f"{r['devices']}x {r['device']} | convolutions {r['convolutions']} | "
          f"compile {r['compile_s']:.1f}s | "
          f"{r['ms_per_step']:.1f} ms/step (p10 {r['ms_p10']:.1f}, p90 {r['ms_p90']:.1f}; "
          f"{r['ms_per_step_unsynced']:.1f} unsynced) | "
          f"{r['images_per_s']:.1f} img/s | {r['gflop_per_step']:.1f} GFLOP/step | "
          f"{r['gflop_per_s']:.1f} GFLOP/s | MFU {100 * r['mfu']:.1f}% of "
          f"{r['peak_tflops']:.2f} TFLOP/s ({r['peak_source']}) | step memory "
          f"{r['xla_step_mb']:.0f} MB" + (f", device peak {r['device_peak_mb']:.0f} MB"
                                            if r["device_peak_mb"] else ""), flush=True)
    results.append(r)
  if what in ("loop", "all"):
    r = bench_loop(config, steps, workdir=workdir)
    print(f"loop  | {r['model']} b{r['batch']} {r['image_size']}px, {r['workers']} workers, "
          f"augmentation on the {r['augment_on']}"
          f"{', samples cached' if r['sample_cache'] else ''} | "
          f"{r['ms_per_step']:.1f} ms/step | {r['images_per_s']:.1f} img/s | "
          f"input wait {100 * r['input_wait']:.0f}% | step alone {r['ms_per_step_alone']:.1f} ms "
          f"(loop {r['loop_over_step']:.2f}x it) | loader thread per batch: "
          f"{r['loader_read_ms']:.1f} ms waiting on Grain, {r['loader_transfer_ms']:.1f} ms to "
          "device", flush=True)
    results.append(r)
  if what in ("data", "all"):
    r = bench_data(config, max(steps // 2, 5), workdir=workdir)
    print(f"data  | {r['source']} b{r['batch']} {r['image_size']}px, {r['workers']} workers"
          f"{', samples cached' if r['sample_cache'] else ''} | "
          f"{r['samples_per_s']:.1f} samples/s | {r['samples_per_s_per_core']:.1f} samples/s "
          "per worker core", flush=True)
    results.append(r)
  return results
