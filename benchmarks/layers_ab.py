"""Before / after of each CPU performance change, one fresh process per measurement, alternating
before and after twice (the machine drifts) and keeping each side's best.

  .venv/bin/python benchmarks/layers_ab.py --steps=10
  .venv/bin/python benchmarks/layers_ab.py --changes=depthwise --steps=5

Changes (every one keeps the parameters, outputs and gradients; tests/test_models.py and
tests/test_xla_defaults.py check that). The changes up to onednn_conv were measured on XLA's
convolutions (model.conv_impl=xla, the default until model.conv_impl=auto) and still are:
- upconv_maxpool: flax's nn.ConvTranspose and nn.max_pool (before) against jaxseg's UpConv
  (matmul + depth-to-space) and max-pool (after; a reshape + max when first measured, now the
  strided-view max-pool of the max_pool change below).
- xla_cpu_conv: YNNPACK convolutions, jaxlib's default (before), against XLA's own, the flag
  jaxseg sets at import (jaxseg.XLA_DEFAULTS, after).
- depthwise: the grouped XLA convolution (before) against jaxseg's shifted-sum depthwise conv
  (after), in UNeXt's MLP blocks and EfficientNet's MBConv blocks.
- max_pool: max-pool as a reshape and a max, differentiated by JAX (before: its gradient
  splits among tied maxima and divides by their count) against jaxseg's max-pool with its own
  first-maximum gradient (pooling.max_pool, after).
- depthwise_grad: the shifted-sum depthwise conv differentiated by JAX (before) against its
  hand-written kernel gradient, the tap products summed together by variadic reductions (after).
- malloc_hugepages: glibc's malloc in 4 KB pages (before) against transparent huge pages for
  its large blocks (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which the jaxseg command and these
  scripts set by re-executing themselves; jaxseg/cli.py), where XLA's per-step temporary
  buffers are faulted in afresh every step.
- conv3d: XLA's 3-D convolution (before) against the sum of 2-D convolutions over the kernel's
  depth taps (conv.conv_nd on CPU, after), in the BraTS 3-D UNet (64^3 crop, batch 1).
- upsample_stencil: UNeXt's 2x bilinear up-sampling by jax.image.resize (before) against its
  fixed stencil (layers.upsample2_bilinear, after).
- depthwise_input_grad: the shifted-sum depthwise conv's input gradient differentiated by JAX
  (before: one zero-bordered copy of the output gradient per tap, then their sum) against the
  flipped-kernel shifted sum (conv._depthwise_input_gradient, after).
- loss_view: the loss and the confusion counts reduced in place, over [B, H, W, K] (before),
  against losses.per_channel_view's (after; for a one-channel sigmoid output the flat [B, 1, N]
  view).
- bn_max_pool: UNeXt's encoder stages as the convolution with its bias, nn.BatchNorm and
  max_pool (before) against batch norm and max-pool as one op, the bias passed to it
  (batch_norm.BatchNorm with then_max_pool, after). The earlier max-pool changes
  (upconv_maxpool, max_pool, pool_head) measure UNeXt with both sides on the separate ops, as
  they were measured.
- upsample_grad: UNeXt's up-sampling (the per-axis stencil) differentiated by JAX (before)
  against the transposed stencil over the edge-padded gradient as its gradient
  (layers.upsample2_bilinear, after).
- onednn_conv: XLA's CPU convolutions (before) against oneDNN's for the 3x3 stride-1 ones
  (model.conv_impl=onednn, jaxseg.models.onednn; after).
- onednn_models: the models beyond the UNet (ResUNet, the VGG16, ResNet50 and EfficientNet-B3
  encoder models, UNeXt) on XLA's convolutions (before) against model.conv_impl=auto where
  oneDNN runs (after).
- onednn_3d: the BraTS 3-D UNet's 3-D convolutions as sums of XLA's 2-D convolutions (before)
  against the same sums of oneDNN's (model.conv_impl=auto, after).
- bn_relu: nn.BatchNorm then its activation (before) against batch norm and the activation as
  one op with its own gradient (batch_norm.batch_norm_act, after): ReLU in the UNet and ResUNet,
  SiLU in UNet++ / EfficientNet-B3 (model.conv_impl=auto, the default).
- mimalloc: glibc's malloc with huge pages (before) against mimalloc preloaded, its freed memory
  kept 10 s (after; jaxseg/allocator.py), with XLA's per-step temporary buffers freed and
  allocated again every step.
- pool_head: max-pool's forward pass as an element-wise max of strided views and the head as
  nn.Conv (before) against XLA's reduce-window and the head's weight gradient as one reduction
  (pooling.max_pool, layers.Head, after): both keep XLA's CPU backend from recomputing a
  producer inside the batch-minor copy it makes for a convolution's weight gradient.
"""

import json
import os
import subprocess
import sys

from absl import app, flags

from jaxseg import allocator

_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per measurement")
_SIZES = flags.DEFINE_list("sizes", ["128", "256"], "input sides")
_BATCH = flags.DEFINE_integer("batch", 8, "batch")
_CHANGES = flags.DEFINE_list("changes", ["upconv_maxpool", "xla_cpu_conv", "depthwise", "conv3d",
                                         "max_pool", "depthwise_grad", "malloc_hugepages",
                                         "upsample_stencil", "pool_head",
                                         "depthwise_input_grad", "loss_view", "bn_max_pool",
                                         "upsample_grad", "onednn_conv", "onednn_models",
                                         "onednn_3d", "bn_relu", "mimalloc"],
                             "which changes to measure")
_CHILD = flags.DEFINE_string("child", None, "internal: one measurement, as JSON")

# change: the models it touches, as (name, model overrides, data overrides, sizes or None for
# --sizes).
_2D = [("unet", {"features": 32}, {}, None), ("unext", {"features": 16}, {}, None)]
_3D = {"depth": 64, "in_channels": 4, "num_classes": 4, "task": "multiclass", "batch_size": 1}
MODELS = {
    "upconv_maxpool": _2D,
    "xla_cpu_conv": _2D,
    "depthwise": [("unext", {"features": 16}, {}, None),
                  ("unetpp_efficientnet_b3", {"features": 16}, {}, [224])],
    "conv3d": [("unet3d", {"features": 16, "norm": "group"}, _3D, [64])],
    "max_pool": _2D,
    "depthwise_grad": [("unext", {"features": 16}, {}, None),
                       ("unetpp_efficientnet_b3", {"features": 16}, {}, [224])],
    "malloc_hugepages": _2D,
    "mimalloc": _2D,
    "upsample_stencil": [("unext", {"features": 16}, {}, None)],
    "pool_head": _2D,
    "depthwise_input_grad": [("unext", {"features": 16}, {}, None),
                             ("unetpp_efficientnet_b3", {"features": 16}, {}, [224])],
    "loss_view": _2D,
    "bn_max_pool": [("unext", {"features": 16}, {}, None)],
    "upsample_grad": [("unext", {"features": 16}, {}, None)],
    "onednn_conv": [("unet", {"features": 32, "conv_impl": "onednn"}, {}, None),
                    ("unext", {"features": 16, "conv_impl": "onednn"}, {}, None)],
    "onednn_models": [("resunet", {"features": 32, "conv_impl": "auto"}, {}, [128]),
                      ("unet_vgg16", {"features": 16, "conv_impl": "auto"}, {}, [128]),
                      ("unet_resnet50", {"features": 16, "conv_impl": "auto"}, {}, [128]),
                      ("unext", {"features": 16, "conv_impl": "auto"}, {}, [256]),
                      ("unetpp_efficientnet_b3", {"features": 16, "conv_impl": "auto"}, {},
                       [224])],
    "onednn_3d": [("unet3d", {"features": 16, "norm": "group", "conv_impl": "auto"}, _3D, [64])],
    "bn_relu": [("unet", {"features": 32, "conv_impl": "auto"}, {}, None),
                ("resunet", {"features": 32, "conv_impl": "auto"}, {}, [128]),
                ("unetpp_efficientnet_b3", {"features": 16, "conv_impl": "auto"}, {}, [224])],
}
# Changes to UNeXt's max-pool from before bn_max_pool folded it into the batch norm.
_SEPARATE_POOL_CHANGES = ("upconv_maxpool", "max_pool", "pool_head")
# Changes that are the environment, set by the parent for the child.
_ENV_CHANGES = ("xla_cpu_conv", "malloc_hugepages", "mimalloc")
_MALLOC_CHANGES = ("malloc_hugepages", "mimalloc")


def _flax_up_conv(features, x, dtype, name=None):
  import flax.linen as nn
  nd = x.ndim - 2
  return nn.ConvTranspose(features, (2,) * nd, strides=(2,) * nd, dtype=dtype, name=name)(x)


def _flax_head(features, x, dtype, name="head"):
  import flax.linen as nn
  import jax.numpy as jnp
  return nn.Conv(features, (1,) * (x.ndim - 2), dtype=dtype, name=name)(x).astype(jnp.float32)


def _flax_max_pool(x, window=2):
  import flax.linen as nn
  nd = x.ndim - 2
  return nn.max_pool(x, (window,) * nd, strides=(window,) * nd)


def _reshape_max_pool(x, window=2):
  nd = x.ndim - 2
  sizes = [n // window for n in x.shape[1:-1]]
  x = x[(slice(None),) + tuple(slice(0, n * window) for n in sizes)]
  shape = [x.shape[0]] + [d for n in sizes for d in (n, window)] + [x.shape[-1]]
  return x.reshape(shape).max(axis=tuple(2 + 2 * i for i in range(nd)))


def _separate_norm(path: str):
  """Puts one path of layers.Norm's batch norm back as it was before its change: "max_pool"
  (before bn_max_pool: the convolution's bias added, nn.BatchNorm, then layers.max_pool, looked
  up when called so that the max-pool changes above can swap it) or "act" (before bn_relu:
  nn.BatchNorm, then its activation). The other path stays jaxseg's batch_norm.BatchNorm."""
  import flax.linen as nn
  import jax.numpy as jnp

  from jaxseg.models import batch_norm, encoders, layers

  class Separate(nn.Module):
    momentum: float = 0.9
    epsilon: float = 1e-5
    window: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train, offset=None, act=None, then_max_pool=False):
      if (path == "max_pool") != then_max_pool:
        return batch_norm.BatchNorm(self.momentum, self.epsilon, self.window, self.dtype)(
            x, train, offset, act, then_max_pool)
      if offset is not None:
        x = x + offset.astype(x.dtype)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                       epsilon=self.epsilon, dtype=self.dtype)(x)
      if then_max_pool:
        return layers.max_pool(x, self.window)
      return batch_norm.activation(x, act)

  layers.BatchNorm = encoders.BatchNorm = Separate  # Norm's and the encoders' batch norms


def _use_before(change: str):
  """Puts the code back as it was before `change`, in this (child) process."""
  if change == "upconv_maxpool":
    from jaxseg.models import layers, unet
    unet.up_conv = _flax_up_conv
    unet.max_pool = layers.max_pool = _flax_max_pool
  elif change == "depthwise":
    from jaxseg.models import conv
    shifted = conv.depthwise_conv
    conv.depthwise_conv = lambda x, k, s, p, impl="auto": shifted(x, k, s, p, impl="xla")
  elif change == "max_pool":
    from jaxseg.models import layers, unet
    unet.max_pool = layers.max_pool = _reshape_max_pool
  elif change == "depthwise_grad":
    from jaxseg.models import conv
    conv._shifted_depthwise = conv._shifted_sum
  elif change == "conv3d":
    from jaxseg.models import conv
    conv.conv_nd = conv._conv
  elif change == "upsample_stencil":
    import jax

    from jaxseg.models import unext
    unext.upsample2_bilinear = lambda x: jax.image.resize(
        x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), "bilinear")
  elif change == "pool_head":
    import functools

    import jax

    from jaxseg.models import layers, pooling, unet, unext

    @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
    def views_max_pool(x, window=2):
      return functools.reduce(jax.numpy.maximum, pooling._pool_views(x, window))

    def views_fwd(x, window):
      y = views_max_pool(x, window)
      return y, (x, y)

    views_max_pool.defvjp(views_fwd, pooling._max_pool_bwd)
    unet.max_pool = layers.max_pool = views_max_pool
    unet.head = unext.head = _flax_head
  elif change == "depthwise_input_grad":
    from jaxseg.models import conv
    conv._shifted_depthwise = conv.with_weight_gradient(conv._shifted_sum,
                                                        conv._depthwise_kernel_gradient)
  elif change == "loss_view":
    from jaxseg import losses, metrics
    losses.per_channel_view = metrics.per_channel_view = (
        lambda a, task: (a, -1, tuple(range(1, a.ndim - 1))))
  elif change == "bn_max_pool":
    _separate_norm("max_pool")
  elif change == "upsample_grad":
    from jaxseg.models import layers, unext
    unext.upsample2_bilinear = layers._upsample2  # the same stencil, differentiated by JAX
  elif change == "bn_relu":
    _separate_norm("act")
  elif change in ("onednn_conv", "onednn_models", "onednn_3d"):
    pass  # the config: _measure sets model.conv_impl back to xla
  elif change not in _ENV_CHANGES:
    raise ValueError(change)


def _measure(spec: dict) -> dict:
  if spec["change"] in _SEPARATE_POOL_CHANGES and spec["model"] == "unext":
    _separate_norm("max_pool")
  if spec["before"]:
    _use_before(spec["change"])
  from jaxseg.bench import bench_step
  from jaxseg.config import default_config
  c = default_config()
  c.model.name = spec["model"]
  c.model.conv_impl = "xla"  # as the earlier changes were measured; overrides may say otherwise
  c.model.update(spec["overrides"])
  if spec["before"] and spec["change"] in ("onednn_conv", "onednn_models", "onednn_3d"):
    c.model.conv_impl = "xla"
  c.data.image_size, c.data.batch_size = spec["size"], spec["batch"]
  c.data.update(spec["data"])
  return {"ms": bench_step(c, steps=spec["steps"], warmup=2)["ms_per_step"]}


def _run_child(spec: dict) -> float:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  if spec["change"] == "xla_cpu_conv" and spec["before"]:
    env["JAXSEG_XLA_DEFAULTS"] = "0"
  if spec["change"] in _MALLOC_CHANGES:  # each side's allocator exactly as the change says
    env = allocator.glibc_environment(env)
  if spec["change"] == "malloc_hugepages":
    env["GLIBC_TUNABLES"] = f"glibc.malloc.hugetlb={0 if spec['before'] else 1}"
  if spec["change"] == "mimalloc" and not spec["before"]:
    env.update(LD_PRELOAD=allocator.mimalloc_library(),
               MIMALLOC_PURGE_DELAY=allocator.MIMALLOC_PURGE_DELAY)
  out = subprocess.run([sys.executable, __file__, f"--child={json.dumps(spec)}"], env=env,
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])["ms"]


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(_measure(json.loads(_CHILD.value))))
    return
  print(f"jaxseg before/after, {os.cpu_count()} CPUs, `{' '.join(sys.argv)}`")
  print("| change | model | input | batch | before ms/step | after ms/step | speed-up |\n"
        "|---|---|---|---|---|---|---|")
  for change in _CHANGES.value:
    for model, overrides, data, sizes in MODELS[change]:
      for size in sizes or map(int, _SIZES.value):
        ms = {True: [], False: []}
        for before in (True, False, True, False):
          spec = {"change": change, "before": before, "model": model, "overrides": overrides,
                  "data": data, "size": size, "batch": _BATCH.value, "steps": _STEPS.value}
          ms[before].append(_run_child(spec))
        b, a = min(ms[True]), min(ms[False])
        batch = data.get("batch_size", _BATCH.value)
        print(f"| {change} | {model} | {size} | {batch} | {b:.0f} | {a:.0f} | "
              f"{b / a:.2f}x |", flush=True)


if __name__ == "__main__":
  # As the jaxseg command runs (jaxseg/allocator.py); the children inherit it.
  allocator.reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
