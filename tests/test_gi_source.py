"""UW-Madison GI reader on small files in the real layout: train.csv (RLE) + 16-bit PNG slices."""

import collections
import csv

import numpy as np
import pytest
from PIL import Image

from jaxseg.config import default_config
from jaxseg.data import pipeline, rle
from jaxseg.data.sources.gi import CLASSES, GISource
from jaxseg.errors import DataError

H, W = 20, 24  # a non-square image: catches (h, w) mix-ups


def _write_gi(root, cases=("case1", "case7"), slices=4, labels=None):
  """Each case has one day with `slices` slices; labels[(case, n)] = {class: mask}."""
  rng = np.random.default_rng(0)
  labels = labels or {}
  rows = []
  for case in cases:
    folder = root / "train" / case / f"{case}_day3" / "scans"
    folder.mkdir(parents=True)
    for n in range(1, slices + 1):
      image = rng.integers(0, 4000, (H, W), dtype=np.uint16)  # 16-bit values > 255
      Image.fromarray(image).save(folder / f"slice_{n:04d}_{W}_{H}_1.50_1.50.png")
      for c in CLASSES:
        mask = labels.get((case, n), {}).get(c)
        rows.append({"id": f"{case}_day3_slice_{n:04d}", "class": c,
                     "segmentation": rle.encode(mask) if mask is not None else ""})
  with open(root / "train.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["id", "class", "segmentation"])
    writer.writeheader()
    writer.writerows(rows)
  return str(root)


def _blob(y0, x0, size=4):
  m = np.zeros((H, W), np.uint8)
  m[y0:y0 + size, x0:x0 + size] = 1
  return m


LABELS = {("case1", 1): {"stomach": _blob(2, 3)},
          ("case1", 2): {"stomach": _blob(5, 5), "large_bowel": _blob(10, 12)},
          ("case7", 3): {"small_bowel": _blob(0, 20)}}


def test_reads_masks_images_and_drops_unlabelled(tmp_path):
  root = _write_gi(tmp_path, labels=LABELS)
  src = GISource(root)
  assert len(src) == 3 and src.case_ids() == ["case1", "case7"]
  s = src[1]  # case1 slice 2
  assert s["image"].shape == (H, W, 1) and s["image"].dtype == np.float32
  assert s["image"].max() > 255  # 16 bits kept
  assert s["mask"].shape == (H, W, 3)
  np.testing.assert_array_equal(s["mask"][..., CLASSES.index("stomach")], _blob(5, 5))
  np.testing.assert_array_equal(s["mask"][..., CLASSES.index("large_bowel")], _blob(10, 12))
  assert s["mask"][..., CLASSES.index("small_bowel")].sum() == 0
  assert len(GISource(root, drop_unlabelled=False)) == 8


def test_two_and_a_half_d_channels_are_the_neighbouring_slices(tmp_path):
  root = _write_gi(tmp_path, labels=LABELS)
  one, three = GISource(root), GISource(root, in_channels=3)
  all_slices = GISource(root, drop_unlabelled=False)
  s = three[1]  # case1 slice 2: neighbours are slices 1 and 3 (slice 3 is unlabelled)
  np.testing.assert_array_equal(s["image"][..., 1], one[1]["image"][..., 0])
  np.testing.assert_array_equal(s["image"][..., 0], all_slices[0]["image"][..., 0])
  np.testing.assert_array_equal(s["image"][..., 2], all_slices[2]["image"][..., 0])


def test_rle_round_trip_on_random_masks():
  rng = np.random.default_rng(1)
  for trial in range(200):
    shape = tuple(rng.integers(1, 40, 2))
    mask = (rng.random(shape) < rng.random()).astype(np.uint8)
    assert np.array_equal(rle.decode(rle.encode(mask), shape), mask), trial
  assert rle.encode(np.zeros((3, 3))) == "" and not rle.decode("", (3, 3)).any()


@pytest.mark.parametrize("bad,match", [
    ("1 2 3", "odd number"), ("0 5", "start below 1"), ("470 20", "ends at pixel 489"),
    ("1 x", "non-integer")])
def test_bad_rle_names_the_csv_row(tmp_path, bad, match):
  root = _write_gi(tmp_path, labels=LABELS)
  lines = (tmp_path / "train.csv").read_text().splitlines()
  lines[3] = lines[3].rsplit(",", 1)[0] + "," + bad  # line 4 of the file: case1 slice 1 stomach
  (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=rf"train.csv line 4 \(case1_day3_slice_0001, stomach\): .*{match}"):
    GISource(root)


def test_csv_id_without_image_and_bad_class(tmp_path):
  root = _write_gi(tmp_path, labels=LABELS)
  with open(tmp_path / "train.csv", "a") as f:
    f.write("case9_day1_slice_0001,stomach,1 3\n")
  with pytest.raises(DataError, match=r"line 26: id case9_day1_slice_0001 has no image"):
    GISource(root)
  _write_gi(tmp_path / "b", labels=LABELS)
  with open(tmp_path / "b" / "train.csv", "a") as f:
    f.write("case1_day3_slice_0001,liver,\n")
  with pytest.raises(DataError, match=r"line 26: class 'liver'"):
    GISource(str(tmp_path / "b"))


def test_corrupt_png_and_wrong_size_name_the_file(tmp_path):
  root = _write_gi(tmp_path, labels=LABELS)
  png = tmp_path / "train/case1/case1_day3/scans" / f"slice_0001_{W}_{H}_1.50_1.50.png"
  png.write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(DataError, match=r"slice_0001_24_20_1.50_1.50.png: unreadable PNG"):
    GISource(root)[0]
  Image.fromarray(np.zeros((H + 1, W), np.uint16)).save(png)
  with pytest.raises(DataError, match=r"image is \(21, 24\) \(h, w\) but its name says \(20, 24\)"):
    GISource(root)[0]


def test_case_strata_and_weights_follow_organ_combinations(tmp_path):
  src = GISource(_write_gi(tmp_path, labels=LABELS))
  assert src.case_strata() == {"case1": 0b101, "case7": 0b010}
  np.testing.assert_allclose(src.sample_weights(), [1.0, 1.0, 1.0])  # three distinct combos


def test_weighted_sampler_frequencies_and_determinism():
  sizes = (10, 30, 60)
  groups = np.repeat(np.arange(3), sizes)
  weights = 1.0 / np.array(sizes)[groups]
  draws = pipeline.WeightedIndices(weights, seed=0)
  n = 30_000
  freq = collections.Counter(groups[[draws[i] for i in range(n)]])
  for g in range(3):  # each combination a third of the draws, whatever its size
    assert freq[g] / n == pytest.approx(1 / 3, abs=0.02)
  again = pipeline.WeightedIndices(weights, seed=0)
  assert [again[i] for i in range(500)] == [draws[i] for i in range(500)]
  assert [draws[i] for i in range(100)] != [draws[i] for i in range(100, 200)]  # epochs differ
  other = pipeline.WeightedIndices(weights, seed=1)
  assert [other[i] for i in range(100)] != [draws[i] for i in range(100)]


def test_gi_batches_through_the_pipeline_with_the_balanced_sampler(tmp_path):
  root = _write_gi(tmp_path, labels=LABELS)
  c = default_config().data
  c.source, c.root, c.image_size, c.in_channels, c.num_classes = "gi", root, 32, 3, 3
  c.task, c.sampler, c.batch_size = "multilabel", "balanced", 4
  src = pipeline.build_source(c, str(tmp_path))
  it = iter(pipeline.train_dataset(src, c, seed=0))
  batch = next(it)
  assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].shape == (4, 32, 32, 3)
  state = it.get_state()
  want = next(it)
  it2 = iter(pipeline.train_dataset(src, c, seed=0))
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["image"], want["image"])
