"""Input-pipeline benchmark: samples/s of each dataset's full training recipe (read, decode,
preprocess, augment, batch) on synthetic files in its real format, by worker count, next to
the train-step rate of the configs it feeds, so the table says whether the loader keeps up.

  .venv/bin/python benchmarks/data.py                         # writes benchmarks/results/
  .venv/bin/python benchmarks/data.py --workers=0,1,2,4,8,16   # on a many-core GPU host

Each row: config, workers, samples/s, samples/s per worker core. The step rows use
`bench_step` at the config's own batch and image size. The tables are rewritten after each row
(result_files.py).
"""

import datetime
import importlib
import os
import sys

import jax
from absl import app, flags

from jaxseg.allocator import reexec_with_malloc_defaults
from jaxseg.bench import bench_data, bench_step, git_commit

import result_files

_CONFIGS = flags.DEFINE_list("configs", ["gi_cnn_scratch", "lgg_unet", "brats_2d", "brats_3d"],
                             "configs/ modules to measure")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "worker processes to try")
_BATCHES = flags.DEFINE_integer("batches", 10, "timed batches per row")
_STEP = flags.DEFINE_list("step_configs", ["gi_cnn_scratch", "gi_unetpp_effb3"],
                          "configs whose train-step rate is measured for comparison")
_STEPS = flags.DEFINE_integer("steps", 5, "timed train steps per step row")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _write(meta: dict, rows: list, steps: list) -> str:
  markdown = (f"{meta['date']} · {meta['cpus']} CPUs ({meta['host_cpu']}) · {meta['device']} · "
              f"jax {meta['jax']} · "
              f"commit {meta['commit']} · `{meta['command']}`\n\n")
  markdown += result_files.table(
      ["config", "source", "image", "batch", "workers", "samples / s", "per worker core"],
      [[r["config"], r["source"], r["image_size"], r["batch"], r["workers"],
        f"{r['samples_per_s']:.1f}", f"{r['samples_per_s_per_core']:.1f}"] for r in rows])
  markdown += "\n" + result_files.table(
      ["train step of", "batch", "images / s"],
      [[r["config"], r["batch"], f"{r['images_per_s']:.2f}"] for r in steps])
  return result_files.write(result_files.stem(_OUT.value, "data", meta["started"],
                                            meta["platform"]),
                            {"meta": meta, "data": rows, "step": steps}, markdown)


def main(argv):
  del argv
  meta = {"date": datetime.date.today().isoformat(), "started": result_files.started(),
          "device": jax.devices()[0].device_kind,
          "platform": jax.devices()[0].platform, "cpus": os.cpu_count(),
          "host_cpu": result_files.host_cpu(), "jax": jax.__version__,
          "command": " ".join(sys.argv), "commit": git_commit()}
  rows, steps = [], []
  for name in _CONFIGS.value:
    for workers in map(int, _WORKERS.value):
      c = _config(name)
      c.data.root, c.data.num_workers = "", workers
      r = bench_data(c, batches=_BATCHES.value)
      r["config"] = name
      rows.append(r)
      print(f"data {name} workers={workers}: {r['samples_per_s']:.1f} samples/s "
            f"({r['samples_per_s_per_core']:.1f} per worker core)", flush=True)
      _write(meta, rows, steps)
  for name in _STEP.value:
    c = _config(name)
    r = bench_step(c, steps=_STEPS.value, warmup=1)
    r["config"] = name
    steps.append(r)
    print(f"step {name}: {r['images_per_s']:.2f} images/s (batch {r['batch']})", flush=True)
    _write(meta, rows, steps)
  print(f"wrote {_write(meta, rows, steps)}.md and .json")


if __name__ == "__main__":
  # As the jaxseg command runs (jaxseg/allocator.py): its allocator.
  reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
