"""model.conv_impl=onednn: float32 2-D convolutions on CPUs by oneDNN, as XLA FFI custom calls
(jaxseg/native/onednn_conv.cc), and bfloat16 ones on CPUs with bfloat16 instructions (AVX-512
BF16 or AMX, `hardware.cpu_has_bfloat16`: elsewhere oneDNN has only slow reference kernels for
them); other dtypes and every other backend stay XLA's (3-D ones, which jaxseg.models.conv
splits on CPUs into 2-D ones, run those on oneDNN).
model.conv_impl=auto (the default) is the same where oneDNN can run, and XLA's where it cannot.

oneDNN comes from its PyPI wheels, installed with jaxseg on x86-64 Linux (oneDNN 3.2 built
against the system's GNU OpenMP, with headers); the handlers are compiled and registered by
jaxseg.models.native on first use. Where either is missing, asking for "onednn" is an error that
says what to install; "auto" logs it once and keeps XLA's convolutions.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxseg.hardware import cpu_backend, cpu_has_bfloat16
from jaxseg.models import native
from jaxseg.models.native import Unavailable

SOURCE = "onednn_conv.cc"
HANDLERS = ("ConvFwd", "ConvBwdData", "ConvWgrad", "ConvFwdBF16", "ConvBwdDataBF16",
            "ConvWgradBF16")


def _flags() -> tuple:
  """Compiler flags for oneDNN's headers and library, from its PyPI wheels."""
  try:
    header = native.find("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
    lib = os.path.dirname(native.find("onednn-cpu-gomp", "libdnnl.so"))
  except Unavailable as e:
    raise Unavailable(f"model.conv_impl=onednn needs oneDNN: {e}") from None
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  return (f"-I{include}", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}")


def build() -> str:
  """The compiled handlers' library, built if missing; raises Unavailable."""
  native.compiler()  # the first thing missing is named first
  return native.build(SOURCE, _flags())


@functools.cache
def register() -> None:
  """Builds (if needed) and registers the three FFI targets, once per process."""
  native.register(build(), "jaxseg_onednn_", HANDLERS)


@functools.cache
def usable() -> bool:
  """For conv_impl=auto: whether oneDNN's convolutions can run in this process (built and
  registered now if so); where not, logs why once."""
  try:
    register()
  except Unavailable as e:
    logging.info("model.conv_impl=auto: XLA's convolutions, as oneDNN's cannot run here: %s", e)
    return False
  return True


def _call(name, shape, a, b, geometry):
  _, (sh, sw), ((pt, pb), (pl, pr)), _ = geometry
  attrs = dict(stride_h=sh, stride_w=sw, pad_top=pt, pad_bottom=pb, pad_left=pl, pad_right=pr)
  suffix = "BF16" if a.dtype == jnp.bfloat16 else ""  # both operands and the result: a's dtype
  return jax.ffi.ffi_call(f"jaxseg_onednn_{name}{suffix}", jax.ShapeDtypeStruct(shape, a.dtype))(
      a, b, **{k: np.int64(v) for k, v in attrs.items()})


def _out_hw(geometry):
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (h, w) = geometry
  return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def _batch_partitioned(name: str, out_shape, rule: str, sums_batch: bool):
  """The FFI call `name` on (a, b) -> out_shape(a.shape, b.shape, geometry), partitioned over
  the batch (native.batch_partitioned); `sums_batch` (the weight gradient: both operands
  batched) adds the devices' partial sums. `geometry`, static: (kernel size, strides, padding,
  input size), each (height, width)."""

  def op(a, b, geometry):
    return _call(name, out_shape(a.shape, b.shape, geometry), a, b, geometry)

  return native.batch_partitioned(op, arrays=2, batched=2 if sums_batch else 1,
                                  sums_batch=sums_batch, rule=rule)


# NHWC input x, HWIO kernel w, NHWC output gradient g.
_forward = _batch_partitioned("ConvFwd", lambda x, w, geo: (x[0], *_out_hw(geo), w[-1]),
                              "b y x i, k l i o -> b p q o", sums_batch=False)
_input_gradient = _batch_partitioned("ConvBwdData", lambda g, w, geo: (g[0], *geo[3], w[2]),
                                     "b p q o, k l i o -> b y x i", sums_batch=False)
_weight_gradient = _batch_partitioned("ConvWgrad", lambda x, g, geo: (*geo[0], x[-1], g[-1]),
                                      "b y x i, b p q o -> k l i o", sums_batch=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d(x, w, geometry):
  return _forward(x, w, geometry)


def _conv2d_fwd(x, w, geometry):
  return _conv2d(x, w, geometry), (x, w)


def _conv2d_bwd(geometry, residuals, g):
  x, w = residuals
  return _input_gradient(g, w, geometry), _weight_gradient(x, g, geometry)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def convolutions_in(hlo: str, conv_impl: str) -> str:
  """Which convolutions a compiled program (its HLO text) runs, for the logs: conv_impl=auto
  resolves per machine."""
  if "jaxseg_onednn_" in hlo:
    return "onednn"
  return "patches" if conv_impl == "patches" else "xla"


def applies(x, w, strides, padding) -> bool:
  """Whether oneDNN takes this convolution: CPU, 2-D, float32 (or bfloat16 where the CPU has
  bfloat16 instructions), not grouped, padding >= 0."""
  dtype_ok = x.dtype == w.dtype and (x.dtype == jnp.float32
                                     or (x.dtype == jnp.bfloat16 and cpu_has_bfloat16()))
  return (cpu_backend() and x.ndim == 4 and dtype_ok
          and w.shape[2] == x.shape[-1] and min(p for pair in padding for p in pair) >= 0)


def conv(x, w, strides, padding, fallback, required: bool = True):
  """conv_general_dilated (NHWC, HWIO) by oneDNN where `applies`, else `fallback(x, w, strides,
  padding)`. Not `required` (conv_impl=auto), also the fallback where oneDNN is not `usable`."""
  if not applies(x, w, strides, padding) or not (required or usable()):
    return fallback(x, w, strides, padding)
  register()
  geometry = (tuple(w.shape[:2]), tuple(strides), tuple(map(tuple, padding)),
              tuple(x.shape[1:3]))
  return _conv2d(x, w, geometry)
