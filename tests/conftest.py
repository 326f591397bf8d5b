"""Shared fixtures: small datasets written in the real on-disk formats, and a tiny config."""

import os

import pytest

# Tests must not touch the user's cache: the embedded dataset builds under pytest's tmp dir.
os.environ.setdefault("JAXSEG_DATA_DIR", os.path.join("/tmp", f"jaxseg-test-data-{os.getuid()}"))

from jaxseg.config import default_config  # noqa: E402
from jaxseg.data import builtin  # noqa: E402


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
