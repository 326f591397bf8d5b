"""model.conv_impl=onednn: float32 2-D convolutions on CPUs by oneDNN, as XLA FFI custom calls
(jaxseg/native/onednn_conv.cc); other dtypes and every other backend stay XLA's (3-D ones,
which jaxseg.models.conv splits on CPUs into 2-D ones, run those on oneDNN).
model.conv_impl=auto (the default) is the same where oneDNN can run, and XLA's where it cannot.

oneDNN comes from its PyPI wheels, installed with jaxseg on x86-64 Linux (oneDNN 3.2 built
against the system's GNU OpenMP, with headers); the handlers are compiled with the
machine's C++ compiler on first use into the user's cache (~/.cache/jaxseg/native, keyed by the
source, jaxlib's version and oneDNN's path) and registered with JAX once per process. Where
either is missing, asking for "onednn" is an error that says what to install; "auto" logs it
once and keeps XLA's convolutions.
"""

import fcntl
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.hardware import cpu_backend

SOURCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "native", "onednn_conv.cc")


class Unavailable(RuntimeError):
  """oneDNN's convolutions cannot be built here; the message says what is missing."""


def _find(distribution: str, suffix: str) -> str:
  try:
    files = importlib.metadata.distribution(distribution).files or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f"model.conv_impl=onednn needs the Python package {distribution} "
                      "(installed with jaxseg on x86-64 Linux, the only platform it has "
                      "wheels for)") from None
  for f in files:
    if str(f).endswith(suffix):
      return str(f.locate())
  raise Unavailable(f"{distribution} is installed but has no {suffix}")


def _cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxseg", "native")


def build() -> str:
  """The compiled handlers' library, built if missing; raises Unavailable."""
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise Unavailable("model.conv_impl=onednn compiles a small C++ library on first use and "
                      "found no C++ compiler (c++ on PATH, or CXX)")
  header = _find("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))
  lib = os.path.dirname(_find("onednn-cpu-gomp", "libdnnl.so"))
  with open(SOURCE, "rb") as f:
    key = hashlib.sha256(f.read() + jax.lib.__version__.encode() + lib.encode()).hexdigest()
  out_dir = os.path.join(_cache_dir(), key[:16])
  path = os.path.join(out_dir, "libonednn_conv.so")
  if os.path.exists(path):
    return path
  try:
    os.makedirs(out_dir, exist_ok=True)
    # One compile per cache entry even with several processes (data-parallel launchers).
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(path):
        _compile(compiler, include, lib, path)
  except OSError as e:  # a read-only or full cache folder: say so, as for the other gaps
    raise Unavailable(f"cannot write the compiled library under {out_dir}: {e}") from None
  return path


def _compile(compiler: str, include: str, lib: str, path: str) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
         f"-I{include}", SOURCE, f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise Unavailable(f"compiling {SOURCE} failed:\n{proc.stderr[-2000:]}")
  os.replace(tmp, path)


@functools.cache
def register() -> None:
  """Builds (if needed) and registers the three FFI targets, once per process."""
  import ctypes
  path = build()
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as e:  # e.g. oneDNN's library moved or removed since the build
    raise Unavailable(f"loading {path} failed: {e}") from None
  for name in ("ConvFwd", "ConvBwdData", "ConvWgrad"):
    jax.ffi.register_ffi_target(f"jaxseg_onednn_{name}", jax.ffi.pycapsule(getattr(library, name)),
                                platform="cpu")


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
  return jax.ffi.ffi_call(f"jaxseg_onednn_{name}", jax.ShapeDtypeStruct(shape, jnp.float32))(
      a, b, **{k: np.int64(v) for k, v in attrs.items()})


def _out_hw(geometry):
  (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (h, w) = geometry
  return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def _batch_spec(sharding) -> P:
  """The sharding's split of the batch axis alone (rank 4); any other split is gathered."""
  spec = tuple(getattr(sharding, "spec", ()))
  return P(spec[0] if spec else None, None, None, None)


def _batch_partitioned(name: str, out_shape, rule: str, sums_batch: bool):
  """The FFI call `name` on (a, b) -> out_shape(a.shape, b.shape, geometry), partitioned over
  the batch: under a sharded jit each device runs it on its own examples. XLA knows nothing of
  a custom call and would gather the whole batch onto every device (each then doing all the
  work); `sums_batch` (the weight gradient) adds the devices' partial sums. `geometry`, static:
  (kernel size, strides, padding, input size), each (height, width)."""

  def op(a, b, geometry):
    return _call(name, out_shape(a.shape, b.shape, geometry), a, b, geometry)

  partitioned = custom_partitioning(op, static_argnums=(2,))

  def shardings(mesh, arg_shapes):
    batch = NamedSharding(mesh, _batch_spec(arg_shapes[0].sharding))
    replicated = NamedSharding(mesh, P())
    return (batch, batch if sums_batch else replicated), replicated if sums_batch else batch

  def infer(geometry, mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes)[1]

  def partition(geometry, mesh, arg_shapes, result_shape):
    args, result = shardings(mesh, arg_shapes)
    axes = args[0].spec[0]

    def lower(a, b):
      out = op(a, b, geometry)
      return lax.psum(out, axes) if sums_batch and axes is not None else out
    return mesh, lower, result, args

  partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                            sharding_rule=rule)
  return partitioned


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
  """Whether oneDNN takes this convolution: CPU, 2-D, float32, not grouped, padding >= 0."""
  return (cpu_backend() and x.ndim == 4 and x.dtype == w.dtype == jnp.float32
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
