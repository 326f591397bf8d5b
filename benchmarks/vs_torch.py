"""JAX / PyTorch training throughput on the same machine, in one run: the classic LGG UNet and
UNeXt, same architecture, loss (BCE + soft Dice), optimizer (Adam), batch and input size.

  .venv/bin/python benchmarks/vs_torch.py                          # CPU: eager torch
  .venv/bin/python benchmarks/vs_torch.py --batch=16 --sizes=256 --dtype=bfloat16 \
      --torch_modes=eager,compile                                  # GPU: AMP, channels_last

Writes benchmarks/results/vs_torch-<date>-<HHMM>-<platform>.{md,json} with the images/s of each
side, their ratio (JAX / PyTorch), device, versions and commit. Rows alternate JAX and torch per
model and size so both see the same machine state. Each side is measured in a fresh process
(`--child`): in one process torch's OpenMP threads and JAX's thread pool shared 2 CPU cores
(JAX's UNeXt step measured 80 ms after torch had run, 53 ms alone), and on a GPU JAX's memory
preallocation would leave torch a quarter. `--repeats=N` keeps each side's best of N. The JAX
side runs under the allocator the jaxseg command sets (mimalloc preloaded, jaxseg/allocator.py);
torch's side under that one, under glibc's malloc alone and under mimalloc with a 10 s purge
delay (`--torch_malloc`), its best kept.
"""

import datetime
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, os.path.dirname(__file__))
from jaxseg import allocator  # noqa: E402
from jaxseg.bench import bench_step, git_commit  # noqa: E402
from jaxseg.config import default_config  # noqa: E402

import result_files  # noqa: E402
import torch_models  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["unet", "unext"], "models to compare")
_SIZES = flags.DEFINE_list("sizes", ["128", "256"], "square input sides")
_BATCH = flags.DEFINE_integer("batch", 8, "batch size")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per row (after warm-up)")
_WARMUP = flags.DEFINE_integer("warmup", 10, "untimed steps first, each side (torch's eager UNeXt "
                               "on CPU needs ~10: 118-137 img/s over the 10 steps after 3, "
                               "170-183 over 30)")
_CONV_IMPL = flags.DEFINE_string("conv_impl", "auto", "the JAX side's model.conv_impl")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "compute dtype (torch: autocast)")
_MODES = flags.DEFINE_list("torch_modes", ["eager"], "eager and/or compile (torch.compile)")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")
_REPEATS = flags.DEFINE_integer("repeats", 1, "measurements per side and row (fresh processes, "
                                "alternated); each side's best is kept")
_TORCH_MALLOC = flags.DEFINE_list(
    "torch_malloc", ["jaxseg", "glibc", "mimalloc:10000"], "allocators the torch side runs under, "
    "keeping its best: jaxseg (the jaxseg command's, jaxseg/allocator.py: mimalloc preloaded, "
    "never giving memory back), glibc (its malloc with huge pages alone) and mimalloc:MS (jaxseg's "
    "with MIMALLOC_PURGE_DELAY=MS: torch's eager UNeXt at 128 px ran 3 % faster under 10000 than "
    "under jaxseg's -1); the JAX side runs under jaxseg's")
_CHILD = flags.DEFINE_string("child", None, "internal: one side's measurement (JSON spec), "
                             "printed as JSON")

FEATURES = {"unet": 32, "unext": 16}


def bench_torch(name: str, size: int, batch: int, steps: int, mode: str, dtype: str,
                warmup: int) -> dict:
  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = torch_models.MODELS[name]().to(device).to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4)
  rng = np.random.default_rng(0)
  x = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32)).to(device)
  x = x.contiguous(memory_format=torch.channels_last)
  y = torch.from_numpy((rng.random((batch, 1, size, size)) < 0.2).astype(np.float32)).to(device)
  amp = dtype == "bfloat16"

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
      loss = torch_models.seg_loss(model(x).float(), y)
    loss.backward()
    opt.step()
    return loss

  fn = torch.compile(step) if mode == "compile" else step
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(warmup):
    fn()
  sync()
  warm = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn().item()  # forces the step to finish, like block_until_ready
    sync()
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  t0 = time.perf_counter()  # back to back, one sync at the end, as jaxseg.bench does too
  for _ in range(steps):
    loss = fn()
  loss.item()
  sync()
  unsynced = (time.perf_counter() - t0) / steps
  return {"side": "torch", "mode": mode, "ms_per_step": 1e3 * med, "torch": torch.__version__,
          "images_per_s": batch / med, "images_per_s_unsynced": batch / unsynced,
          "warmup_s": warm,
          "params": sum(p.numel() for p in model.parameters())}


def bench_jax(name: str, size: int, batch: int, steps: int, dtype: str, warmup: int,
              conv_impl: str = "auto") -> dict:
  c = default_config()
  c.model.name, c.model.features, c.model.dtype = name, FEATURES[name], dtype
  c.model.conv_impl = conv_impl
  c.data.image_size, c.data.batch_size = size, batch
  r = bench_step(c, steps=steps, warmup=warmup)
  return {"side": "jax", "ms_per_step": r["ms_per_step"], "images_per_s": r["images_per_s"],
          "images_per_s_unsynced": r["images_per_s_unsynced"],
          "compile_s": r["compile_s"], "mfu": r["mfu"], "device": r["device"],
          "convolutions": r["convolutions"],
          "platform": jax.devices()[0].platform, "jax": jax.__version__}


def measure(spec: dict) -> dict:
  """One side of one row in a fresh process (this script with --child), under the allocator
  spec["malloc"] names (default: this process's, jaxseg's)."""
  env = allocator.named_environment(spec.get("malloc", "jaxseg"))
  out = subprocess.run([sys.executable, __file__, f"--child={json.dumps(spec)}"],
                       capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(f"{spec} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def best(spec: dict, repeats: int, mallocs=("jaxseg",)) -> dict:
  """The fastest of `repeats` measurements under each allocator, alternated."""
  runs = [{**measure({**spec, "malloc": m}), "malloc": m} for _ in range(repeats) for m in mallocs]
  return max(runs, key=lambda r: r["images_per_s"])


def run_child(spec: dict) -> None:
  if spec["side"] == "jax":
    r = bench_jax(spec["model"], spec["size"], spec["batch"], spec["steps"], spec["dtype"],
                  spec["warmup"], spec.get("conv_impl", "auto"))
  else:
    torch.set_num_threads(os.cpu_count())
    # What a PyTorch user tuning for speed sets: cuDNN picks the fastest algorithm per shape.
    torch.backends.cudnn.benchmark = True
    r = bench_torch(spec["model"], spec["size"], spec["batch"], spec["steps"], spec["mode"],
                    spec["dtype"], spec["warmup"])
  print(json.dumps(r), flush=True)


def write_tables(meta: dict, rows: list) -> str:
  """The .json and .md tables; called after every row (result_files.py)."""
  markdown = (
      f"{meta['date']} · {meta['device']} ({meta['cpus']} CPUs: {meta['host_cpu']}) · jax {meta['jax']} · "
      f"torch {meta['torch']} · {meta['dtype']} · JAX convolutions {meta['conv_impl']} "
      f"({meta['convolutions']}) · "
      f"commit {meta['commit']} · "
      f"`{meta['command']}`\n\nSynced: each step timed to its end (median); unsynced: the "
      "steps back to back, one sync at the end, as a training loop runs them.\n\n")
  markdown += result_files.table(
      ["model", "input", "batch", "torch", "JAX img/s", "torch img/s", "JAX / torch",
       "unsynced JAX / torch", "JAX MFU", "torch's best allocator"],
      [[r["model"], r["size"], r["batch"], r["torch_mode"], f"{r['jax_images_per_s']:.2f}",
        f"{r['torch_images_per_s']:.2f}", f"{r['ratio']:.2f}", f"{r['ratio_unsynced']:.2f}",
        f"{100 * r['jax_mfu']:.1f}%", r["torch_malloc"]] for r in rows])
  subset = _MODELS.value if _MODELS.value != _MODELS.default else []
  return result_files.write(
      result_files.stem(_OUT.value, "vs_torch", meta["started"], meta["platform"], meta["dtype"],
                        *subset, "" if meta["conv_impl"] == "auto" else meta["conv_impl"]),
      {"meta": meta, "rows": rows}, markdown)


def main(argv):
  del argv
  if _CHILD.value:
    return run_child(json.loads(_CHILD.value))
  # No JAX or torch device use here: on a GPU this process would hold memory the children need.
  meta = {"date": datetime.date.today().isoformat(), "started": result_files.started(),
          "cpus": os.cpu_count(), "host_cpu": result_files.host_cpu(),
          "dtype": _DTYPE.value, "conv_impl": _CONV_IMPL.value, "command": " ".join(sys.argv),
          "commit": git_commit(),
          "repeats": _REPEATS.value}
  rows = []
  for name in _MODELS.value:
    for size in map(int, _SIZES.value):
      spec = {"model": name, "size": size, "batch": _BATCH.value, "steps": _STEPS.value,
              "warmup": _WARMUP.value, "dtype": _DTYPE.value, "conv_impl": _CONV_IMPL.value}
      j = best({**spec, "side": "jax"}, _REPEATS.value)
      meta.update(device=j["device"], platform=j["platform"], jax=j["jax"],
                  convolutions=j["convolutions"])
      for mode in _MODES.value:
        t = best({**spec, "side": "torch", "mode": mode}, _REPEATS.value,
                 allocator.usable_names(_TORCH_MALLOC.value))
        meta["torch"] = t["torch"]
        row = {"model": name, "size": size, "batch": _BATCH.value, "torch_mode": mode,
               "jax_images_per_s": j["images_per_s"], "torch_images_per_s": t["images_per_s"],
               "ratio": j["images_per_s"] / t["images_per_s"],
               "ratio_unsynced": j["images_per_s_unsynced"] / t["images_per_s_unsynced"],
               "jax_mfu": j["mfu"],
               "jax_compile_s": j["compile_s"], "torch_warmup_s": t["warmup_s"],
               "params": t["params"], "torch_malloc": t["malloc"]}
        rows.append(row)
        stem = write_tables(meta, rows)
        print(f"{name} {size}px b{_BATCH.value} ({mode}): JAX {j['images_per_s']:.2f} img/s, "
              f"torch {t['images_per_s']:.2f} img/s, ratio {row['ratio']:.2f} (unsynced "
              f"{row['ratio_unsynced']:.2f}), JAX MFU "
              f"{100 * j['mfu']:.1f}%, compile JAX {j['compile_s']:.1f} s / torch warm-up "
              f"{t['warmup_s']:.1f} s", flush=True)
  print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
  # As the jaxseg command runs (jaxseg/allocator.py); the children inherit it.
  allocator.reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
