"""Shared fixtures: small datasets written in the real on-disk formats, and a tiny config."""

import os

import pytest

# Tests must not touch the user's cache: the embedded dataset builds under pytest's tmp dir.
os.environ.setdefault("JAXSEG_DATA_DIR", os.path.join("/tmp", f"jaxseg-test-data-{os.getuid()}"))

from jaxseg.config import default_config  # noqa: E402
from jaxseg.data import builtin  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """One XLA compilation cache for the run, shared by pytest-xdist's workers (their temp dirs
  sit side by side under the run's) and by the commands tests start (the environment): many
  tests compile the same tiny programs (the tiny UNet's init, train and eval steps), and each
  distinct program then compiles once per run. Fresh for every run, so no run's timing or
  result rests on an earlier one's, and never the user's (the jaxseg command's default)."""
  import jax

  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  cache, min_seconds = str(root / "xla-cache"), 0.2
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_seconds)


@pytest.fixture(scope="session")
def lgg_root(tmp_path_factory):
  """Six synthetic patients x 6 slices of 32x32 in kaggle_3m layout."""
  root = tmp_path_factory.mktemp("lgg") / "kaggle_3m"
  return builtin.write_synthetic(str(root), patients=6, slices=6, size=32, seed=3)


def tiny_config(root: str):
  """A UNet small enough that compile + a few steps take seconds on 2 CPU cores."""
  c = default_config()
  c.data.root = root
  c.data.image_size = 32
  c.data.batch_size = 4
  c.data.eval_batch_size = 4
  c.data.split.val = 0.2
  c.data.split.test = 0.2
  c.model.features = 4
  c.model.depth = 2
  c.optim.lr = 3e-3
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 3
  return c
