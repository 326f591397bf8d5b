import os

import numpy as np
import pytest
import tifffile

from jaxseg.data import builtin
from jaxseg.data.sources.lgg import LGGSource, scan
from jaxseg.errors import DataError


def _write(folder, case, n, image, mask):
  os.makedirs(folder / case, exist_ok=True)
  tifffile.imwrite(folder / case / f"{case}_{n}.tif", image)
  if mask is not None:
    tifffile.imwrite(folder / case / f"{case}_{n}_mask.tif", mask)


def _pair(size=16):
  image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
  mask = np.zeros((size, size), np.uint8)
  mask[4:8, 4:8] = 255
  return image, mask


def test_scan_reads_real_layout_sorted_by_slice_number(tmp_path):
  image, mask = _pair()
  for n in (10, 2, 1):  # numeric, not lexical, order
    _write(tmp_path, "TCGA_CS_4941_19960909", n, image, mask)
  _write(tmp_path, "TCGA_DU_5849_19950405", 1, image, mask)
  (tmp_path / "data.csv").write_text("Patient,RNASeqCluster\n")  # the real top-level csv
  recs = scan(str(tmp_path))
  assert [(r.case_id[-8:], r.index) for r in recs] == [
      ("19960909", 1), ("19960909", 2), ("19960909", 10), ("19950405", 1)]
  src = LGGSource(str(tmp_path))
  sample = src[0]
  assert sample["image"].shape == (16, 16, 3) and sample["image"].dtype == np.uint8
  assert sample["mask"].shape == (16, 16, 1) and sample["mask"].dtype == np.uint8
  assert set(np.unique(sample["mask"])) == {0.0, 1.0}
  assert sample["mask"].sum() == 16
  assert sample["case_id"] == "TCGA_CS_4941_19960909"


def test_subset_and_strata(lgg_root):
  src = LGGSource(lgg_root)
  assert len(src) == 36 and len(src.case_ids()) == 6
  sub = src.subset(src.case_ids()[:2])
  assert len(sub) == 12 and sub.case_ids() == src.case_ids()[:2]
  strata = src.case_strata()
  assert set(strata) == set(src.case_ids()) and set(strata.values()) <= {0, 1}


def test_synthetic_generator_writes_requested_size(tmp_path):
  root = builtin.write_synthetic(str(tmp_path / "syn"), patients=2, slices=3, size=48)
  src = LGGSource(root)
  assert len(src) == 6 and src[0]["image"].shape == (48, 48, 3)
  assert any(src[i]["mask"].any() for i in range(6))


def test_missing_mask_names_the_file(tmp_path):
  image, _ = _pair()
  _write(tmp_path, "P1", 1, image, None)
  with pytest.raises(DataError, match=r"P1_1\.tif: no mask file P1_1_mask\.tif"):
    scan(str(tmp_path))


def test_empty_or_wrong_folder(tmp_path):
  with pytest.raises(DataError, match="no LGG slices found"):
    scan(str(tmp_path))
  (tmp_path / "notes.txt").write_text("x")
  with pytest.raises(DataError, match="not a directory"):
    scan(str(tmp_path / "notes.txt"))
  with pytest.raises(DataError, match="not a directory"):
    scan(str(tmp_path / "missing"))


def test_size_mismatch_names_both_files(tmp_path):
  image, _ = _pair(16)
  _write(tmp_path, "P1", 1, image, np.zeros((8, 8), np.uint8))
  with pytest.raises(DataError, match=r"P1_1_mask\.tif: mask shape \(8, 8\) does not match"):
    LGGSource(str(tmp_path))[0]


def test_truncated_tif_names_the_file(tmp_path):
  image, mask = _pair()
  _write(tmp_path, "P1", 1, image, mask)
  path = tmp_path / "P1" / "P1_1.tif"
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(DataError, match=r"P1_1\.tif: unreadable TIFF"):
    LGGSource(str(tmp_path))[0]


def test_non_binary_mask_is_rejected(tmp_path):
  image, mask = _pair()
  mask[0, 0] = 17
  _write(tmp_path, "P1", 1, image, mask)
  with pytest.raises(DataError, match=r"P1_1_mask\.tif: mask is not binary \(values \[0, 17, 255\]"):
    LGGSource(str(tmp_path))[0]


def test_wrong_channel_count(tmp_path):
  _, mask = _pair()
  _write(tmp_path, "P1", 1, np.zeros((16, 16, 4), np.uint8), mask)
  with pytest.raises(DataError, match=r"expected H x W x 3 image, got shape \(16, 16, 4\)"):
    LGGSource(str(tmp_path))[0]


def test_mask_as_0_1_is_accepted(tmp_path):
  image, mask = _pair()
  _write(tmp_path, "P1", 1, image, (mask > 0).astype(np.uint8))
  assert LGGSource(str(tmp_path))[0]["mask"].sum() == 16


def test_embedded_mni152_dataset_is_real_lgg_layout(tmp_path):
  root = builtin.build_mni152(str(tmp_path / "mni"))
  src = LGGSource(root)
  cases = src.case_ids()
  assert len(cases) == 12 and {c.split("_")[1] for c in cases} == {"AX", "COR", "SAG"}
  assert len(src) == 223
  sample = src[len(src) // 2]
  assert sample["image"].shape == (256, 256, 3) and sample["image"].dtype == np.uint8
  # White matter is a real fraction of a mid-brain slice, and the image is brighter there (T1).
  fg = sample["mask"][..., 0] > 0
  assert 0.05 < fg.mean() < 0.3
  assert sample["image"][fg, 1].mean() > sample["image"][~fg, 1].mean()
  assert builtin.build_mni152(root) == root  # built once, then reused
  assert not any(name.startswith("mni.partial") for name in os.listdir(tmp_path))


def test_lgg_balanced_weights_give_tumour_and_clear_slices_equal_mass(lgg_root):
  src = LGGSource(lgg_root)
  w = src.sample_weights()
  has = np.array([src[i]["mask"].any() for i in range(len(src))])
  assert w[has].sum() == pytest.approx(1.0) and w[~has].sum() == pytest.approx(1.0)
