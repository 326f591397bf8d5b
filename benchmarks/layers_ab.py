"""Before / after, in one process: the UNet and UNeXt train steps with flax's nn.ConvTranspose and
nn.max_pool (before) against jaxseg's UpConv (matmul + depth-to-space) and reshape max-pool
(after). Same parameters, same outputs (tests/test_models.py); only the XLA programs differ.

  .venv/bin/python benchmarks/layers_ab.py --steps=10
"""

import os
import sys

import flax.linen as nn
from absl import app, flags

from jaxseg.bench import bench_step
from jaxseg.config import default_config
from jaxseg.models import unet, unext

_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per row")
_SIZES = flags.DEFINE_list("sizes", ["128", "256"], "input sides")
_BATCH = flags.DEFINE_integer("batch", 8, "batch")

NEW = {"up_conv": unet.up_conv, "max_pool": unet.max_pool}


def _flax_up_conv(features, x, dtype, name=None):
  nd = x.ndim - 2
  return nn.ConvTranspose(features, (2,) * nd, strides=(2,) * nd, dtype=dtype, name=name)(x)


def _flax_max_pool(x, window=2):
  nd = x.ndim - 2
  return nn.max_pool(x, (window,) * nd, strides=(window,) * nd)


def _use(before: bool):
  unet.up_conv = _flax_up_conv if before else NEW["up_conv"]
  unet.max_pool = unext.max_pool = _flax_max_pool if before else NEW["max_pool"]


def main(argv):
  del argv
  print(f"jaxseg layers A/B, {os.cpu_count()} CPUs, `{' '.join(sys.argv)}`")
  print("| model | input | batch | before ms/step | after ms/step | speed-up |\n|---|---|---|---|---|---|")
  for name, features in (("unet", 32), ("unext", 16)):
    for size in map(int, _SIZES.value):
      ms = {}
      for before in (True, False, True, False):  # alternate: the machine drifts
        _use(before)
        c = default_config()
        c.model.name, c.model.features = name, features
        c.data.image_size, c.data.batch_size = size, _BATCH.value
        r = bench_step(c, steps=_STEPS.value, warmup=2)
        ms.setdefault(before, []).append(r["ms_per_step"])
      b, a = min(ms[True]), min(ms[False])
      print(f"| {name} | {size} | {_BATCH.value} | {b:.0f} | {a:.0f} | {b / a:.2f}x |", flush=True)
  _use(False)


if __name__ == "__main__":
  app.run(main)
