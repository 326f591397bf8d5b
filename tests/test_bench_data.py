"""Synthetic GI / Decathlon files read by the real readers, and the input-pipeline benchmark."""

import numpy as np
import pytest

from jaxseg.bench import bench_data
from jaxseg.config import default_config
from jaxseg.data import builtin
from jaxseg.data.sources.decathlon import DecathlonSource
from jaxseg.data.sources.gi import GISource


def test_synthetic_gi_and_decathlon_go_through_the_readers(tmp_path):
  gi = GISource(builtin.resolve_root("synthetic:3:32:5", str(tmp_path), "gi"), in_channels=3)
  assert len(gi) > 0 and gi.case_ids() == ["case1", "case2", "case3"]
  sample = gi[0]
  assert sample["image"].shape == (32, 32, 3) and sample["mask"].shape == (32, 32, 3)
  assert sample["mask"].any()  # unlabelled slices are dropped, so every slice has an organ
  root = builtin.resolve_root("synthetic:2:24:12", str(tmp_path), "decathlon")
  vol = DecathlonSource(root, str(tmp_path / "cache"), depth=12)[0]
  assert vol["image"].shape == (12, 24, 24, 4)
  assert set(np.unique(vol["mask"])) == {0, 1, 2, 3}
  # a second call reuses the folder
  assert builtin.resolve_root("synthetic:2:24:12", str(tmp_path), "decathlon") == root


@pytest.mark.parametrize("source", ["lgg", "gi", "decathlon"])
def test_bench_data_runs_each_format_with_its_augmentation(source, tmp_path):
  c = default_config()
  c.data.source, c.data.image_size, c.data.batch_size, c.data.num_workers = source, 32, 4, 0
  c.data.split.val = c.data.split.test = 0.0
  if source == "gi":
    c.data.num_classes, c.data.task, c.data.in_channels = 3, "multilabel", 3
    c.data.clahe_clip, c.data.augment.elastic_or_grid, c.data.augment.ssr = 2.0, 1.0, 1.0
    c.data.augment.noise_or_blur = 1.0
    c.data.sample_cache = "auto"  # as configs/gi_*.py: for synthetic files, in the workdir
  if source == "decathlon":
    c.data.num_classes, c.data.task, c.data.in_channels = 4, "multiclass", 4
    c.data.normalize, c.data.crop = "none", (8, 32, 32)
  r = bench_data(c, batches=3, warmup=1, workdir=str(tmp_path))
  assert r["source"] == source and r["samples_per_s"] > 0
  assert r["samples_per_s_per_core"] == r["samples_per_s"]  # no workers: one core
  assert r["sample_cache"] == (source == "gi")
  assert bool(list(tmp_path.glob("samples/*/*.npz"))) == (source == "gi")
