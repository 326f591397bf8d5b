"""data.sample_cache: preprocessed samples kept on disk (jaxseg.data.sample_cache), on GI files
written in the real layout (16-bit PNGs, train.csv of run-length masks)."""

import glob
import os

import numpy as np
import pytest
from PIL import Image

from jaxseg.config import default_config
from jaxseg.data import pipeline, synthetic
from jaxseg.data.sample_cache import PreprocessedSource
from jaxseg.data.sources.gi import GISource
from jaxseg.data.transforms import Preprocess

PREP = Preprocess(size=32, clahe_clip=2.0, zscore_on_device=True)  # resize + CLAHE, uint8 out


@pytest.fixture
def gi_root(tmp_path):
  return synthetic.write_gi(str(tmp_path / "gi"), cases=2, size=40, slices=4)


def _entries(folder):
  return sorted(glob.glob(os.path.join(folder, "*", "*.npz")))


def _assert_same(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], np.ndarray):
      assert a[k].dtype == b[k].dtype, k
      np.testing.assert_array_equal(a[k], b[k])
    else:
      assert type(a[k]) is type(b[k]) and a[k] == b[k], k


def test_cached_samples_equal_the_preprocessed_ones_and_are_read_back(gi_root, tmp_path,
                                                                     monkeypatch):
  src = GISource(gi_root, in_channels=3)
  folder = str(tmp_path / "cache")
  plain, cached = PreprocessedSource(src, PREP), PreprocessedSource(src, PREP, folder)
  want = [plain[i] for i in range(len(src))]
  assert want[0]["image"].dtype == np.uint8 and want[0]["image"].shape == (32, 32, 3)
  for i in range(len(src)):
    _assert_same(cached[i], want[i])
  assert len(_entries(folder)) == len(src)

  def no_reading(self, i):
    raise AssertionError("a cached sample was read from its source files again")
  monkeypatch.setattr(GISource, "__getitem__", no_reading)
  for i in range(len(src)):
    _assert_same(cached[i], want[i])


def test_a_rewritten_file_or_another_setting_gets_its_own_entry(gi_root, tmp_path):
  src = GISource(gi_root, in_channels=3)
  folder = str(tmp_path / "cache")
  cached = PreprocessedSource(src, PREP, folder)
  before = cached[0]["image"]
  # New pixels in the sample's own slice, with a later modification time.
  path = src.records[0].path
  pixels = np.asarray(Image.open(path))
  Image.fromarray((4000 - pixels.astype(np.int32)).astype(np.uint16)).save(path)
  st = os.stat(path)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
  after = cached[0]["image"]
  _assert_same(cached[0], PreprocessedSource(src, PREP)[0])
  assert not np.array_equal(after, before)
  n = len(_entries(folder))
  smaller = PreprocessedSource(src, Preprocess(size=24, clahe_clip=2.0, zscore_on_device=True),
                               folder)
  assert smaller[0]["image"].shape == (24, 24, 3)
  assert len(_entries(folder)) == n + 1


def test_an_unreadable_entry_is_recomputed_and_rewritten(gi_root, tmp_path):
  src = GISource(gi_root, in_channels=3)
  folder = str(tmp_path / "cache")
  cached = PreprocessedSource(src, PREP, folder)
  want = cached[1]
  (entry,) = _entries(folder)
  with open(entry, "r+b") as f:
    f.truncate(100)  # as a write cut short would leave it
  _assert_same(cached[1], want)
  with np.load(entry) as z:
    np.testing.assert_array_equal(z["image"], want["image"])


def test_a_folder_that_cannot_be_written_leaves_samples_uncached(gi_root, tmp_path):
  src = GISource(gi_root, in_channels=3)
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  cached = PreprocessedSource(src, PREP, str(blocker / "cache"))
  for i in range(2):
    _assert_same(cached[i], PreprocessedSource(src, PREP)[i])


@pytest.mark.parametrize("workers", [0, 1])
def test_training_and_evaluation_streams_are_the_same_with_the_cache(gi_root, tmp_path, workers):
  c = default_config().data
  c.source, c.root, c.image_size, c.in_channels, c.num_classes = "gi", gi_root, 32, 3, 3
  c.task, c.sampler, c.batch_size, c.eval_batch_size = "multilabel", "balanced", 4, 4
  c.clahe_clip, c.augment.on_device, c.num_workers = 2.0, "device", workers
  src = pipeline.build_source(c, str(tmp_path))
  want_it = iter(pipeline.train_dataset(src, c, seed=0))
  want = [next(want_it) for _ in range(2)]
  want_eval = list(pipeline.eval_batches(src, c))
  c.sample_cache = str(tmp_path / "cache")
  for _ in range(2):  # writing the entries, then reading them
    it = iter(pipeline.train_dataset(src, c, seed=0))
    for w in want:
      _assert_same(next(it), w)
    for got, w in zip(pipeline.eval_batches(src, c), want_eval, strict=True):
      _assert_same(got, w)
  assert _entries(c.sample_cache)
