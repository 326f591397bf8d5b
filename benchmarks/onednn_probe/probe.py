"""A probe, not part of jaxseg: the train step with the 3x3 stride-1 convolutions computed by
oneDNN (the library under PyTorch's CPU convolutions) through XLA FFI custom calls, against
XLA's own CPU convolutions. Build first with build.sh (g++, oneDNN 3.2 wheels from PyPI).

  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/onednn_probe/probe.py check
  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/onednn_probe/probe.py MODE SIZE [MODEL]

MODE: xla (XLA's convolutions), wgrad (oneDNN for the weight gradients only), all (oneDNN for
the forward pass and both gradients). The UNet runs with model.conv_impl=patches, whose
convolution (jaxseg.models.conv.conv_patch_grad) is replaced here, as is conv.conv_nd (UNeXt's
encoder convolutions); other convolutions (strided, 1x1, transposed, flax's nn.Conv in UNeXt's
decoder) stay XLA's. Prints one RESULT line (median synced, p10, unsynced ms per step).
"""

import ctypes
import os
import sys

from jaxseg.cli import reexec_with_malloc_defaults

reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxseg.models import conv as convmod  # noqa: E402

LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".onednn", "libonednn_conv.so")
_SAME = ((1, 1), (1, 1))


def register():
  lib = ctypes.cdll.LoadLibrary(LIB)
  for name in ("ConvFwd", "ConvBwdData", "ConvWgrad"):
    jax.ffi.register_ffi_target("onednn_" + name, jax.ffi.pycapsule(getattr(lib, name)),
                                platform="cpu")


def _call(name, shape, *args):
  return jax.ffi.ffi_call("onednn_" + name, jax.ShapeDtypeStruct(shape, jnp.float32))(*args)


def _xla_input_gradient(x, w, g):
  return jax.vjp(lambda x: convmod._conv(x, w, (1, 1), _SAME), x)[1](g)[0]


def make_conv(mode: str):
  """conv(x, w, strides, padding) with oneDNN where it applies (see the module docstring)."""

  @jax.custom_vjp
  def onednn(x, w):
    return _call("ConvFwd", (*x.shape[:3], w.shape[3]), x, w)

  def fwd(x, w):
    return onednn(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    return _call("ConvBwdData", x.shape, g, w), _call("ConvWgrad", w.shape, x, g)

  onednn.defvjp(fwd, bwd)
  wgrad_only = convmod.with_weight_gradient(
      convmod._conv, lambda x, w, g, s, p: _call("ConvWgrad", w.shape, x, g))

  def conv(x, w, strides, padding):
    applies = (x.ndim == 4 and w.shape[:2] == (3, 3) and tuple(strides) == (1, 1)
               and tuple(map(tuple, padding)) == _SAME and x.dtype == jnp.float32)
    if not applies:
      return convmod._conv(x, w, strides, padding)
    return onednn(x, w) if mode == "all" else wgrad_only(x, w, strides, padding)
  return conv


def _squares(conv):
  return lambda x, w: (conv(x, w, (1, 1), _SAME) ** 2).sum()


def check():
  conv = make_conv("all")
  for shape, cout in [((2, 16, 16, 8), 4), ((8, 128, 128, 3), 32), ((4, 16, 16, 64), 64)]:
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout))
    ours = jax.jit(jax.value_and_grad(_squares(conv), (0, 1)))(x, w)
    ref = jax.value_and_grad(_squares(convmod._conv), (0, 1))(x, w)
    errs = [float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)]
    print(f"{shape} -> {cout}: relative error of loss, dx, dw: "
          + ", ".join(f"{e:.1e}" for e in errs))
    assert max(errs) < 1e-5, errs


def main():
  register()
  if sys.argv[1] == "check":
    return check()
  mode, size = sys.argv[1], int(sys.argv[2])
  model = sys.argv[3] if len(sys.argv) > 3 else "unet"
  if mode != "xla":
    convmod.conv_patch_grad = convmod.conv_nd = make_conv(mode)
  from jaxseg.bench import bench_step
  from jaxseg.config import default_config
  c = default_config()
  c.model.name, c.model.features = model, {"unet": 32, "unext": 16}[model]
  c.model.conv_impl = "xla" if mode == "xla" else "patches"
  c.data.image_size, c.data.batch_size = size, 8
  r = bench_step(c, steps=int(os.environ.get("STEPS", 15)), warmup=3)
  print(f"RESULT {mode} {model} {size} {r['ms_per_step']:.1f} p10 {r['ms_p10']:.1f} "
        f"unsynced {r['ms_per_step_unsynced']:.1f}")


if __name__ == "__main__":
  main()
