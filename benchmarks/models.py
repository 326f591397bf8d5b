"""Train-step benchmark of every registry model at its project's input size.

  .venv/bin/python benchmarks/models.py --steps=20 --batch=4            # writes benchmarks/results/
  .venv/bin/python benchmarks/models.py --steps=50 --batch=16 --dtype=bfloat16   # on a GPU

For each model: parameters, forward FLOPs per example (its convolutions and matmuls counted from
the jaxpr, jaxseg.hardware.forward_flops), compile time, median train-step time with its
10th-90th percentile spread, images/s, model FLOPs utilisation (MFU, against jaxseg.hardware's
peak: a datasheet rate on accelerators, a measured matmul on CPUs) and XLA's memory for the
step. Results go to a markdown table and a JSON file named after the date and device, with the
jax version and git commit, so numbers from different runs are never mixed up (rewritten after
each row: result_files.py). Compare models only within one file: these machines are noisy
across runs.
"""

import datetime
import os
import sys

import jax
from absl import app, flags

from jaxseg import models
from jaxseg.allocator import reexec_with_malloc_defaults
from jaxseg.bench import bench_step, git_commit
from jaxseg.config import default_config

import result_files

# name: (model overrides, data overrides) -- the projects' networks and input sizes.
SUITE = {
    "unet (LGG, Buda)": ({"name": "unet", "features": 32}, {"image_size": 256}),
    "unet_vgg16 (LGG)": ({"name": "unet_vgg16", "features": 16}, {"image_size": 256}),
    "unet_resnet50 (LGG)": ({"name": "unet_resnet50", "features": 16}, {"image_size": 256}),
    "resunet (LGG)": ({"name": "resunet", "features": 64, "depth": 3}, {"image_size": 256}),
    "unext (LGG)": ({"name": "unext", "features": 16}, {"image_size": 256}),
    "unet residual (GI scratch)": ({"name": "unet", "features": 56, "residual": True,
                                    "dropout": 0.1}, {"image_size": 224, "num_classes": 3,
                                                      "task": "multilabel"}),
    "unetpp_efficientnet_b3 (GI transfer)": ({"name": "unetpp_efficientnet_b3", "features": 16},
                                             {"image_size": 224, "num_classes": 3,
                                              "task": "multilabel"}),
    # The other encoder / decoder pairs of the registry, at the LGG size.
    "unet_efficientnet_b3 (combination)": ({"name": "unet_efficientnet_b3", "features": 16},
                                           {"image_size": 256}),
    "unetpp_vgg16 (combination)": ({"name": "unetpp_vgg16", "features": 16}, {"image_size": 256}),
    "unetpp_resnet50 (combination)": ({"name": "unetpp_resnet50", "features": 16},
                                      {"image_size": 256}),
    "unet (BraTS 2-D)": ({"name": "unet", "features": 16},
                         {"image_size": 160, "in_channels": 2, "num_classes": 4,
                          "task": "multiclass"}),
    "unet3d (BraTS 3-D, 64^3 crop)": ({"name": "unet3d", "features": 16, "norm": "group"},
                                       {"image_size": 64, "depth": 64, "in_channels": 4,
                                        "num_classes": 4, "task": "multiclass"}),
}

_STEPS = flags.DEFINE_integer("steps", 50, "timed steps per model (after 2 warm-up steps)")
_BATCH = flags.DEFINE_integer("batch", 4, "global batch (3-D rows use 1)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_ONLY = flags.DEFINE_list("only", [], "substrings of suite names to run")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")


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
  for name, (model_kw, data_kw) in SUITE.items():
    if _ONLY.value and not any(s in name for s in _ONLY.value):
      continue
    c = default_config()
    c.model.update(model_kw)
    c.data.update(data_kw)
    c.model.dtype = _DTYPE.value
    c.data.batch_size = 1 if c.data.depth else _BATCH.value
    m = models.build(c.model, c.data.in_channels, c.data.num_classes)
    shape = ((c.data.depth,) if c.data.depth else ()) + (c.data.image_size,) * 2 + (
        c.data.in_channels,)
    variables = models.init_variables(m, shape)
    r = bench_step(c, steps=_STEPS.value, warmup=2)
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
