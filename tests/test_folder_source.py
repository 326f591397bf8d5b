"""The plain images/ + masks/ folder source: formats, patients, errors, training."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from jaxseg.data.sources.folder import FolderSource
from jaxseg.errors import DataError


def _write(root, n_patients=3, slices=2, size=16):
  rng = np.random.default_rng(0)
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  fmts = [("png", "png"), ("tif", "png"), ("npy", "npy")]
  for p in range(n_patients):
    for s in range(slices):
      name = f"pat{p}_s{s}"
      image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
      mask = np.zeros((size, size), np.uint8)
      if (p + s) % 2:
        mask[4:9, 5:12] = 255
      img_fmt, mask_fmt = fmts[p % 3]
      for folder, array, fmt in (("images", image, img_fmt), ("masks", mask, mask_fmt)):
        path = root / folder / f"{name}.{fmt}"
        if fmt == "npy":
          np.save(path, array)
        elif fmt == "tif":
          tifffile.imwrite(path, array)
        else:
          Image.fromarray(array).save(path)
  return str(root)


def test_reads_every_format_and_groups_patients(tmp_path):
  src = FolderSource(_write(tmp_path / "d"), in_channels=3, case_pattern=r"^(pat\d+)_")
  assert len(src) == 6 and src.case_ids() == ["pat0", "pat1", "pat2"]
  s = src[1]  # pat0_s1: png image, png mask with a box
  assert s["image"].shape == (16, 16, 3) and s["mask"].shape == (16, 16, 1)
  assert s["mask"].sum() == 35 and set(np.unique(s["mask"])) == {0.0, 1.0}
  assert src[4]["mask"].sum() == 0 and src[5]["mask"].sum() == 35  # pat2 (npy): s0 empty
  sub = src.subset(["pat1"])
  assert len(sub) == 2 and {sub[i]["case_id"] for i in range(2)} == {"pat1"}
  assert [v.indices for v in src.scored_volumes()] == [(0, 1), (2, 3), (4, 5)]
  assert src.case_strata() == {"pat0": 1, "pat1": 1, "pat2": 1}
  per_image = FolderSource(str(tmp_path / "d"), in_channels=3)
  assert len(per_image.case_ids()) == 6


def test_errors_name_the_file(tmp_path):
  root = _write(tmp_path / "d")
  (tmp_path / "d" / "masks" / "pat0_s0.png").unlink()
  with pytest.raises(DataError, match="no mask .* pat0_s0.png"):
    FolderSource(root, 3)
  root = _write(tmp_path / "e")
  (tmp_path / "e" / "images" / "pat1_s0.tif").write_bytes(b"not a tif")
  with pytest.raises(DataError, match="pat1_s0.tif: unreadable"):
    FolderSource(root, 3)[2]
  with pytest.raises(DataError, match="case_pattern"):
    FolderSource(root, 3, case_pattern=r"^(x\d)")
