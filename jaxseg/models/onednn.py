"""model.conv_impl=onednn: 3x3 stride-1 'SAME' convolutions on CPUs by oneDNN, as XLA FFI custom
calls (jaxseg/native/onednn_conv.cc), the other convolutions and every other backend on XLA's.

oneDNN comes from the optional extra (`pip install 'jaxseg[onednn]'`: the oneDNN 3.2 wheels
built against the system's GNU OpenMP, with headers); the handlers are compiled with the
machine's C++ compiler on first use into the user's cache (~/.cache/jaxseg/native, keyed by the
source, jaxlib's version and oneDNN's path) and registered with JAX once per process. Where
either is missing, asking for this implementation is an error that says what to install.
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

from jaxseg.hardware import cpu_backend

SOURCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "native", "onednn_conv.cc")
_SAME = ((1, 1), (1, 1))


class Unavailable(RuntimeError):
  """oneDNN's convolutions cannot be built here; the message says what is missing."""


def _find(distribution: str, suffix: str) -> str:
  try:
    files = importlib.metadata.distribution(distribution).files or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f"model.conv_impl=onednn needs the Python package {distribution} "
                      "(pip install 'jaxseg[onednn]')") from None
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
  os.makedirs(out_dir, exist_ok=True)
  # One compile per cache entry even with several processes (data-parallel launchers) starting.
  with open(os.path.join(out_dir, ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(path):
      tmp = f"{path}.{os.getpid()}.tmp"
      cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
             f"-I{jax.ffi.include_dir()}", f"-I{include}", SOURCE, f"-L{lib}", "-ldnnl",
             f"-Wl,-rpath,{lib}", "-o", tmp]
      proc = subprocess.run(cmd, capture_output=True, text=True)
      if proc.returncode:
        raise Unavailable(f"compiling {SOURCE} failed:\n{proc.stderr[-2000:]}")
      os.replace(tmp, path)
  return path


@functools.cache
def register() -> None:
  """Builds (if needed) and registers the three FFI targets, once per process."""
  import ctypes
  library = ctypes.cdll.LoadLibrary(build())
  for name in ("ConvFwd", "ConvBwdData", "ConvWgrad"):
    jax.ffi.register_ffi_target(f"jaxseg_onednn_{name}", jax.ffi.pycapsule(getattr(library, name)),
                                platform="cpu")


def _call(name, shape, *args):
  return jax.ffi.ffi_call(f"jaxseg_onednn_{name}", jax.ShapeDtypeStruct(shape, jnp.float32))(*args)


@jax.custom_vjp
def _conv3x3(x, w):
  return _call("ConvFwd", (*x.shape[:-1], w.shape[-1]), x, w)


def _conv3x3_fwd(x, w):
  return _conv3x3(x, w), (x, w)


def _conv3x3_bwd(residuals, g):
  x, w = residuals
  return _call("ConvBwdData", x.shape, g, w), _call("ConvWgrad", w.shape, x, g)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def applies(x, w, strides, padding) -> bool:
  """Whether oneDNN takes this convolution: CPU, 2-D, 3x3, stride 1, 'SAME', float32."""
  return (cpu_backend() and x.ndim == 4 and tuple(w.shape[:2]) == (3, 3)
          and tuple(strides) == (1, 1) and tuple(map(tuple, padding)) == _SAME
          and x.dtype == w.dtype == jnp.float32)


def conv(x, w, strides, padding, fallback):
  """conv_general_dilated (NHWC, HWIO) by oneDNN where `applies`, else `fallback(x, w, strides,
  padding)`."""
  if not applies(x, w, strides, padding):
    return fallback(x, w, strides, padding)
  register()
  return _conv3x3(x, w)
