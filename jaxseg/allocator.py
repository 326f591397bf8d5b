"""The memory allocator the `jaxseg` command and the benchmark scripts run under, set by
re-executing the process once (the dynamic loader and glibc read these variables only at
start-up; in your own Python process, start it with them set).

XLA's CPU runtime allocates each execution's temporary buffers afresh and frees them at its
end (the UNet train step at 128 px, batch 8: 430 MB by XLA's memory analysis). glibc serves
blocks that large with a fresh mmap and unmaps them on free, so every step the kernel faults in
and zeroes all of it again. Two defaults, each added unless the environment already sets it:
- mimalloc (the cmeel-mimalloc wheel, a dependency on x86-64 Linux) preloaded, never giving
  freed memory back to the system (MIMALLOC_PURGE_DELAY=-1): the next step reuses the same
  pages. Left out where the wheel is missing, LD_PRELOAD is set already, or a JAX GPU / TPU
  plugin is installed (measured on CPUs only so far).
- `glibc.malloc.hugetlb=1` in GLIBC_TUNABLES, for glibc's malloc where mimalloc is not
  preloaded: transparent huge pages for the large blocks, 2 MB faults instead of 4 KB ones.
BUILD.md's performance notes have both measured. JAXSEG_MALLOC_DEFAULTS=0 turns both off.
"""

import importlib.metadata
import importlib.util
import os
import sys

MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"
# Milliseconds mimalloc keeps freed memory before returning it to the system; -1: never. Its
# default, 10, returned the steps' buffers between steps. 10 s, though far longer than a step,
# still let mimalloc 3.4 return them now and then: the UNet at 256 px on a 2-core VM faulted its
# 1.2 GB of temporaries in afresh in about one synced step in 40, and one to three times in 10
# back to back, 1.6-3.5 s of system time each (BUILD.md). The price: what a process frees stays
# its own until it exits (that UNet run's peak RSS 4.4 GB, against 3.4-4.2 with 10 s).
MIMALLOC_PURGE_DELAY = "-1"


def mimalloc_library() -> str | None:
  """The installed cmeel-mimalloc wheel's libmimalloc.so, or None without it."""
  try:
    files = importlib.metadata.distribution("cmeel-mimalloc").files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if str(f).endswith("lib/libmimalloc.so"):
      path = str(f.locate())
      return path if os.path.exists(path) else None
  return None


def preloadable_mimalloc() -> str | None:
  """mimalloc_library() where no JAX GPU or TPU plugin is installed, else None: the preload is
  measured on CPUs only; what it does beside CUDA's or libtpu's host allocations is not."""
  if (importlib.metadata.entry_points(group="jax_plugins") or importlib.util.find_spec("jax_plugins")
      or importlib.util.find_spec("libtpu")):
    return None
  return mimalloc_library()


def malloc_defaults(environ, platform: str, mimalloc: str | None) -> dict:
  """The variables to add to `environ` (empty: nothing to add) on `platform`, with `mimalloc`
  the library to preload or None."""
  if platform != "linux" or environ.get("JAXSEG_MALLOC_DEFAULTS", "1") == "0":
    return {}
  add = {}
  tunables = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" not in tunables:
    add["GLIBC_TUNABLES"] = f"{tunables}:{MALLOC_TUNABLE}" if tunables else MALLOC_TUNABLE
  # A preload already there is the user's choice (or this re-exec's own, in the child).
  if mimalloc and "LD_PRELOAD" not in environ:
    add["LD_PRELOAD"] = mimalloc
    if "MIMALLOC_PURGE_DELAY" not in environ:
      add["MIMALLOC_PURGE_DELAY"] = MIMALLOC_PURGE_DELAY
  return add


def glibc_environment(environ) -> dict:
  """A copy of `environ` for a child process under glibc's malloc with huge pages alone (the
  benchmarks' side without mimalloc)."""
  env = {k: v for k, v in environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
  env.update(JAXSEG_MALLOC_DEFAULTS="0", GLIBC_TUNABLES=MALLOC_TUNABLE)
  return env


def named_environment(name: str, environ=os.environ) -> dict | None:
  """A child process's environment under the allocator `name` (the benchmarks' names): jaxseg
  (None: `environ`, the jaxseg command's), glibc (glibc_environment) or mimalloc:MS (`environ`
  with MIMALLOC_PURGE_DELAY=MS)."""
  if name == "jaxseg":
    return None
  if name == "glibc":
    return glibc_environment(environ)
  if name.startswith("mimalloc:"):
    return {**environ, "MIMALLOC_PURGE_DELAY": name.split(":", 1)[1]}
  raise ValueError(f"allocator {name!r}: not jaxseg, glibc or mimalloc:MS")


def usable_names(names: list, environ=os.environ) -> list:
  """`names` less the mimalloc:MS ones where mimalloc is not preloaded (a host with a JAX GPU
  plugin: the re-exec leaves it out there)."""
  preloaded = "libmimalloc" in environ.get("LD_PRELOAD", "")
  return [n for n in names if preloaded or not n.startswith("mimalloc:")]


def reexec_with_malloc_defaults(environ=os.environ, execv=os.execv, platform=sys.platform,
                                argv=None, command=None, mimalloc=preloadable_mimalloc) -> None:
  """Re-runs this command (`command`, default `python -m jaxseg <argv[1:]>`) with
  `malloc_defaults` added to the environment, if they add anything."""
  add = malloc_defaults(environ, platform, mimalloc() if platform == "linux" else None)
  if not add:
    return
  environ.update(add)
  argv = sys.argv if argv is None else argv
  command = command or [sys.executable, "-m", "jaxseg", *argv[1:]]
  execv(command[0], command)
