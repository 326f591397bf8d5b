"""`jaxseg bench`: how fast the compiled train step and the whole loop run on this machine.

- step: the jitted train step on a device-resident random batch; compile time, FLOPs per step
  (XLA cost analysis), median and spread of the step time over N synced steps after warm-up.
- loop: the real Grain pipeline with augmentation feeding the step through the device
  prefetcher, N steps, wall-clock images/s and the fraction of time spent waiting for input.
Results print as one line each and return as dicts (benchmarks/ collects them into tables).
"""

import tempfile
import time

import jax
import numpy as np

from jaxseg.data import pipeline
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


def _random_batch(exp: Experiment, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  shapes = exp.abstract_batch()
  batch = {"image": rng.normal(size=shapes["image"].shape).astype(np.float32)}
  if exp.config.data.task == "multiclass":
    batch["mask"] = rng.integers(0, exp.config.data.num_classes,
                                 shapes["mask"].shape).astype(np.float32)
  else:
    batch["mask"] = (rng.random(shapes["mask"].shape) < 0.2).astype(np.float32)
  return jax.device_put(batch, exp.batch_sharding)


def bench_step(config, steps: int = 50, warmup: int = 3) -> dict:
  exp = Experiment(config, workdir="")
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
  compiled, compile_s, flops = exp.compile_train_step(state, acc)
  batch = _random_batch(exp)
  for _ in range(warmup):
    state, acc = compiled(state, batch, acc)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, acc = compiled(state, batch, acc)
    jax.block_until_ready((state, acc))
    times.append(time.perf_counter() - t0)
  t = np.array(times)
  med = float(np.median(t))
  return {"what": "step", "model": config.model.name, "device": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "batch": config.data.batch_size,
          "image_size": config.data.image_size, "dtype": config.model.dtype,
          "compile_s": compile_s, "ms_per_step": 1e3 * med,
          "ms_p10": 1e3 * float(np.percentile(t, 10)), "ms_p90": 1e3 * float(np.percentile(t, 90)),
          "images_per_s": config.data.batch_size / med, "gflop_per_step": flops / 1e9,
          "gflop_per_s": flops / med / 1e9, "steps": steps}


def bench_loop(config, steps: int = 50, warmup: int = 3, workdir: str | None = None) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    config = config.copy_and_resolve_references()
    if not config.data.root:
      config.data.root = f"synthetic:8:{config.data.image_size}:16"
    exp = Experiment(config, workdir="")
    exp.workdir = workdir or tmp  # synthetic data and the split go here, no checkpoints
    source = exp.sources()["train"]
    state = exp.init_state()
    acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
    compiled, _, _ = exp.compile_train_step(state, acc)
    batches = pipeline.DevicePrefetcher(
        iter(pipeline.train_dataset(source, config.data, config.seed)), exp.batch_sharding)
    try:
      for _ in range(warmup):
        state, acc = compiled(state, next(batches)[0], acc)
      jax.block_until_ready(state)
      wait, t0 = 0.0, time.perf_counter()
      for _ in range(steps):
        tw = time.perf_counter()
        batch, _ = next(batches)
        wait += time.perf_counter() - tw
        state, acc = compiled(state, batch, acc)
      jax.block_until_ready((state, acc))
      total = time.perf_counter() - t0
    finally:
      batches.close()
  return {"what": "loop", "model": config.model.name, "batch": config.data.batch_size,
          "image_size": config.data.image_size, "workers": config.data.num_workers,
          "images_per_s": steps * config.data.batch_size / total,
          "ms_per_step": 1e3 * total / steps, "input_wait": wait / total, "steps": steps}


def run_bench(config, what: str = "all", steps: int = 50, workdir: str | None = None) -> list:
  results = []
  if what in ("step", "all"):
    r = bench_step(config, steps)
    print(f"step  | {r['model']} b{r['batch']} {r['image_size']}px {r['dtype']} on "
          f"{r['devices']}x {r['device']} | compile {r['compile_s']:.1f}s | "
          f"{r['ms_per_step']:.1f} ms/step (p10 {r['ms_p10']:.1f}, p90 {r['ms_p90']:.1f}) | "
          f"{r['images_per_s']:.1f} img/s | {r['gflop_per_step']:.1f} GFLOP/step | "
          f"{r['gflop_per_s']:.1f} GFLOP/s", flush=True)
    results.append(r)
  if what in ("loop", "all"):
    r = bench_loop(config, steps, workdir=workdir)
    print(f"loop  | {r['model']} b{r['batch']} {r['image_size']}px, {r['workers']} workers | "
          f"{r['ms_per_step']:.1f} ms/step | {r['images_per_s']:.1f} img/s | "
          f"input wait {100 * r['input_wait']:.0f}%", flush=True)
    results.append(r)
  return results
