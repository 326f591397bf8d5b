"""Train-step benchmark of every registry model as its project trains it.

  .venv/bin/python benchmarks/models.py                      # writes benchmarks/results/
  .venv/bin/python benchmarks/models.py --steps=5 --batch=4  # a quick look on a CPU
  .venv/bin/python benchmarks/models.py --dtype=bfloat16     # on a GPU

Each row is a project's config from configs/ (input size, batch, model settings, frozen layers,
remat, optimizer, on-device augmentation), so the step timed is the step that config trains;
`--batch` replaces the projects' batches on the 2-D rows (the 3-D row keeps its own). For each
model: parameters, forward FLOPs per example (its convolutions and matmuls counted from the
jaxpr, jaxseg.hardware.forward_flops), compile time, median train-step time with its 10th-90th
percentile spread, images/s, model FLOPs utilisation (MFU, against jaxseg.hardware's peak: a
datasheet rate on accelerators, a measured matmul on CPUs) and XLA's memory for the step.
Results go to a markdown table and a JSON file named after the date and device, with the jax
version and git commit, so numbers from different runs are never mixed up (rewritten after each
row: result_files.py). Compare models only within one file: these machines are noisy across
runs.
"""

import datetime
import importlib
import os
import sys

import jax
from absl import app, flags

from jaxseg import models
from jaxseg.allocator import reexec_with_malloc_defaults
from jaxseg.bench import bench_step, git_commit

import result_files

# name: (configs/ module, its argument, model overrides). The combinations are the registry's
# other encoder / decoder pairs, trained as the LGG UNet is.
SUITE = {
    "unet (LGG, Buda)": ("lgg_unet", None, {}),
    "unet_vgg16 (LGG)": ("lgg_unet_vgg16", None, {}),
    "unet_resnet50 (LGG)": ("lgg_unet_resnet50", None, {}),
    "resunet (LGG)": ("lgg_resunet", None, {}),
    "unext (LGG)": ("lgg_unext", None, {}),
    "unet residual (GI scratch)": ("gi_cnn_scratch", None, {}),
    "unetpp_efficientnet_b3 (GI transfer, phase 1)": ("gi_unetpp_effb3", "1", {}),
    "unet_efficientnet_b3 (combination)": ("lgg_unet", None,
                                           {"name": "unet_efficientnet_b3", "features": 16}),
    "unetpp_vgg16 (combination)": ("lgg_unet", None, {"name": "unetpp_vgg16", "features": 16}),
    "unetpp_resnet50 (combination)": ("lgg_unet", None,
                                      {"name": "unetpp_resnet50", "features": 16}),
    "unet (BraTS 2-D)": ("brats_2d", None, {}),
    "unet3d (BraTS 3-D)": ("brats_3d", None, {}),
}

_STEPS = flags.DEFINE_integer("steps", 50, "timed steps per model (after 2 warm-up steps)")
_UNSYNCED = flags.DEFINE_integer(
    "unsynced_steps", None, "steps timed back to back after the synced ones (default: --steps; "
    "on a CPU, where the two agree, fewer save the run's time)")
_BATCH = flags.DEFINE_integer("batch", 0, "global batch of the 2-D rows; 0: each project's")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_ONLY = flags.DEFINE_list("only", [], "substrings of suite names to run")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")


def suite_config(name: str):
  """The config of SUITE[name], with this run's dtype and batch."""
  module, arg, model_overrides = SUITE[name]
  get_config = importlib.import_module(f"configs.{module}").get_config
  c = get_config() if arg is None else get_config(arg)
  c.model.update(model_overrides)
  c.model.dtype = _DTYPE.value
  c.init_from = ""  # the step, not the weights: nothing is read
  c.model.pretrained = ""
  if _BATCH.value and not c.data.depth:
    c.data.batch_size = _BATCH.value
  return c


def _write(rows: list, meta: dict) -> str:
  markdown = (f"{meta['date']} · {meta['devices']}x {meta['device']} (host {meta['host_cpu']}) · "
              f"jax {meta['jax']} · "
              f"commit {meta['commit']} · `{meta['command']}`\n\n")
  if rows:
    markdown += f"Peak for MFU: {rows[0]['peak_tflops']:.3f} TFLOP/s, {rows[0]['peak_source']}.\n\n"
  markdown += result_files.table(
      ["model", "input", "batch", "params", "GFLOP fwd / example", "compile s",
       "ms / step (p10-p90)", "images / s", "MFU", "step memory MB"],
      [[r["name"], r["input"], r["batch"], f"{r['params']:,}", f"{r['gflop_fwd_per_example']:.2f}",
        f"{r['compile_s']:.1f}", f"{r['ms_per_step']:.0f} ({r['ms_p10']:.0f}-{r['ms_p90']:.0f})",
        f"{r['images_per_s']:.2f}", f"{100 * r['mfu']:.1f}%", f"{r['xla_step_mb']:.0f}"]
       for r in rows])
  return result_files.write(
      result_files.stem(_OUT.value, "models", meta["started"], meta["platform"], _DTYPE.value,
                        *_ONLY.value), {"meta": meta, "rows": rows}, markdown)


def main(argv):
  del argv
  meta = {"date": datetime.date.today().isoformat(), "started": result_files.started(),
          "device": jax.devices()[0].device_kind,
          "platform": jax.devices()[0].platform, "devices": jax.device_count(),
          "host_cpu": result_files.host_cpu(), "jax": jax.__version__, "commit": git_commit(), "command": " ".join(sys.argv),
          "dtype": _DTYPE.value}
  rows = []
  for name in SUITE:
    if _ONLY.value and not any(s in name for s in _ONLY.value):
      continue
    c = suite_config(name)
    m = models.build(c.model, c.data.in_channels, c.data.num_classes)
    shape = ((c.data.depth,) if c.data.depth else ()) + (c.data.image_size,) * 2 + (
        c.data.in_channels,)
    variables = models.init_variables(m, shape)
    r = bench_step(c, steps=_STEPS.value, warmup=2, unsynced_steps=_UNSYNCED.value)
    r.update(name=name, params=models.count_params(variables["params"]),
             gflop_fwd_per_example=models.forward_flops(m, variables, shape) / 1e9,
             input="x".join(map(str, shape)))
    rows.append(r)
    print(f"{name}: {r['params']:,} params | {r['gflop_fwd_per_example']:.2f} GFLOP fwd/ex | "
          f"{r['ms_per_step']:.0f} ms/step | {r['images_per_s']:.2f} img/s | "
          f"MFU {100 * r['mfu']:.1f}%", flush=True)
    _write(rows, meta)
  print(f"wrote {_write(rows, meta)}.md and .json")


if __name__ == "__main__":
  # As the jaxseg command runs (jaxseg/allocator.py): its allocator.
  reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
