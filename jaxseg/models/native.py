"""jaxseg's C++ XLA FFI handlers for CPUs (jaxseg/native/*.cc): each source is compiled with the
machine's C++ compiler on first use into the user's cache (~/.cache/jaxseg/native, keyed by the
source, jaxlib's version and the compiler flags), its handlers registered with JAX once per
process, and called partitioned over the batch under a sharded jit. Users: oneDNN's
convolutions (models/onednn.py) and batch norm's reductions (models/batch_norm.py)."""

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess

import jax
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

SOURCES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "native")


class Unavailable(RuntimeError):
  """A native library cannot be built or loaded here; the message says what is missing."""


def find(distribution: str, suffix: str) -> str:
  """The path of the file ending in `suffix` that the Python package `distribution` installed."""
  try:
    files = importlib.metadata.distribution(distribution).files or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f"the Python package {distribution} is not installed (installed with "
                      "jaxseg on x86-64 Linux, the only platform it has wheels for)") from None
  for f in files:
    if str(f).endswith(suffix):
      return str(f.locate())
  raise Unavailable(f"{distribution} is installed but has no {suffix}")


def compiler() -> str:
  found = shutil.which(os.environ.get("CXX", "c++"))
  if found is None:
    raise Unavailable("jaxseg compiles a small C++ library on first use and found no C++ "
                      "compiler (c++ on PATH, or CXX)")
  return found


def _cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxseg", "native")


def build(source: str, flags: tuple = ()) -> str:
  """The compiled library of jaxseg/native/`source` (with extra compiler `flags`: include and
  link options), built if missing; raises Unavailable."""
  cxx = compiler()
  path_in = os.path.join(SOURCES, source)
  with open(path_in, "rb") as f:
    key = hashlib.sha256(f.read() + jax.lib.__version__.encode() + repr(flags).encode())
  out_dir = os.path.join(_cache_dir(), key.hexdigest()[:16])
  path = os.path.join(out_dir, f"lib{os.path.splitext(source)[0]}.so")
  if os.path.exists(path):
    return path
  try:
    os.makedirs(out_dir, exist_ok=True)
    # One compile per cache entry even with several processes (data-parallel launchers).
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(path):
        _compile(cxx, path_in, flags, path)
  except OSError as e:  # a read-only or full cache folder: say so, as for the other gaps
    raise Unavailable(f"cannot write the compiled library under {out_dir}: {e}") from None
  return path


def _compile(cxx: str, source: str, flags: tuple, path: str) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
         source, *flags, "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    raise Unavailable(f"compiling {source} failed:\n{proc.stderr[-2000:]}")
  os.replace(tmp, path)


def register(path: str, prefix: str, handlers: tuple) -> None:
  """Registers the library's FFI `handlers` (exported symbols) as CPU targets
  f"{prefix}{name}"."""
  import ctypes
  try:
    library = ctypes.cdll.LoadLibrary(path)
  except OSError as e:  # e.g. a library it links moved or removed since the build
    raise Unavailable(f"loading {path} failed: {e}") from None
  for name in handlers:
    jax.ffi.register_ffi_target(f"{prefix}{name}", jax.ffi.pycapsule(getattr(library, name)),
                                platform="cpu")


def _batch_spec(sharding, ndim: int) -> P:
  """The sharding's split of the batch axis alone; any other split is gathered."""
  spec = tuple(getattr(sharding, "spec", ()))
  return P(spec[0] if spec else None, *(None,) * (ndim - 1))


def batch_partitioned(op, arrays: int, batched: int, sums_batch: bool, rule: str):
  """op(*arrays, static) -> array or tuple of arrays, an FFI call on `arrays` arrays and one
  static argument, partitioned over the batch:
  under a sharded jit each device runs it on its own examples. The first `batched` arrays have
  the batch as their leading axis, the others (per-channel vectors, kernels) are replicated.
  The outputs are batch-split as the first array, or, with `sums_batch` (sums over the batch),
  replicated and summed over the devices' parts. XLA knows nothing of a custom call and would
  gather the whole batch onto every device, each then doing all the work. `rule`: the
  einsum-like sharding rule, the batch named b. `static`, hashable: shapes, attributes."""
  partitioned = custom_partitioning(op, static_argnums=(arrays,))

  def shardings(mesh, arg_shapes, result_shape):
    batch = NamedSharding(mesh, _batch_spec(arg_shapes[0].sharding, len(arg_shapes[0].shape)))
    replicated = NamedSharding(mesh, P())
    args = tuple(NamedSharding(mesh, P(batch.spec[0], *(None,) * (len(s.shape) - 1)))
                 if i < batched else replicated for i, s in enumerate(arg_shapes))
    out = replicated if sums_batch else batch
    results = tuple(out for _ in result_shape) if isinstance(result_shape, tuple) else out
    return args, results

  def infer(static, mesh, arg_shapes, result_shape):
    return shardings(mesh, arg_shapes, result_shape)[1]

  def partition(static, mesh, arg_shapes, result_shape):
    args, results = shardings(mesh, arg_shapes, result_shape)
    axes = args[0].spec[0]

    def lower(*arrays):
      out = op(*arrays, static)
      return lax.psum(out, axes) if sums_batch and axes is not None else out
    return mesh, lower, results, args

  partitioned.def_partition(partition=partition, infer_sharding_from_operands=infer,
                            sharding_rule=rule)
  return partitioned
