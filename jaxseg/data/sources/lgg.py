"""Reader for the Kaggle LGG MRI set (`kaggle_3m`, Buda et al.).

On disk: one folder per patient, `<patient>/<patient>_<n>.tif` (H x W x 3 uint8: pre-contrast,
FLAIR, post-contrast) beside `<patient>/<patient>_<n>_mask.tif` (H x W uint8, 0 or 255). A
`data.csv` with genomic columns may sit at the top; it is not needed here.

The index is built from file names alone; pixels are read in `__getitem__`, so the source is a
cheap Grain random-access source that worker processes can pickle.
"""

import dataclasses
import os
import re

import numpy as np
import tifffile

from jaxseg.data.sources import VolumeRef, files_fingerprint, group_slices, inverse_frequency
from jaxseg.errors import DataError

_SLICE_RE = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)\.tiff?$")


@dataclasses.dataclass(frozen=True)
class SliceRecord:
  case_id: str
  index: int  # slice number from the file name
  image_path: str
  mask_path: str


def scan(root: str) -> list[SliceRecord]:
  """Lists every (image, mask) pair under `root`, sorted by patient then slice number."""
  if not os.path.isdir(root):
    raise DataError(f"{root}: not a directory (expected the kaggle_3m folder of patient folders)")
  records = []
  for case_id in sorted(os.listdir(root)):
    folder = os.path.join(root, case_id)
    if not os.path.isdir(folder):
      continue
    names = set(os.listdir(folder))
    for name in names:
      m = _SLICE_RE.match(name)
      if not m:
        continue  # masks and unrelated files
      mask_name = f"{m['stem']}_{m['n']}_mask{os.path.splitext(name)[1]}"
      image_path = os.path.join(folder, name)
      if mask_name not in names:
        raise DataError(f"{image_path}: no mask file {mask_name} beside it")
      records.append(SliceRecord(case_id, int(m["n"]), image_path, os.path.join(folder, mask_name)))
  if not records:
    raise DataError(
        f"{root}: no LGG slices found (expected <patient>/<patient>_<n>.tif with "
        "<patient>_<n>_mask.tif beside each)")
  records.sort(key=lambda r: (r.case_id, r.index))
  return records


def read_tif(path: str) -> np.ndarray:
  try:
    array = tifffile.imread(path)
  except Exception as e:  # tifffile raises several types for truncated or foreign files
    raise DataError(f"{path}: unreadable TIFF ({type(e).__name__}: {e})") from e
  if array.size == 0:  # tifffile only warns on some corrupt headers and returns nothing
    raise DataError(f"{path}: unreadable TIFF (no image data)")
  return array


def load_pair(rec: SliceRecord, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks one slice: image uint8 [H, W, C], mask uint8 [H, W, 1] in {0, 1}."""
  image = read_tif(rec.image_path)
  mask = read_tif(rec.mask_path)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] != in_channels:
    raise DataError(
        f"{rec.image_path}: expected H x W x {in_channels} image, got shape {image.shape}")
  if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):
    mask = mask[..., 0]  # some exports store the mask as RGB(A) grey
  if mask.shape != image.shape[:2]:
    raise DataError(
        f"{rec.mask_path}: mask shape {mask.shape} does not match image "
        f"{rec.image_path} shape {image.shape[:2]}")
  # Binary (0/255 or 0/1) iff every pixel is 0 or the maximum, and that is 1 or 255: two
  # comparisons, 25x cheaper than np.unique on a 256x256 mask, which was the loader's largest
  # cost after the z-score left it.
  top = mask.max()
  if not (top in (0, 1, 255) and ((mask == 0) | (mask == top)).all()):
    values = np.unique(mask)
    raise DataError(
        f"{rec.mask_path}: mask is not binary (values {values[:8].tolist()}"
        f"{'...' if len(values) > 8 else ''}; expected 0/255 or 0/1)")
  return image, (mask > 0).astype(np.uint8)[..., None]


class LGGSource:
  """Grain random-access source over a kaggle_3m folder (or a subset of its patients)."""

  def __init__(self, root: str, case_ids=None, in_channels: int = 3, records=None):
    self.root = root
    self.in_channels = in_channels
    records = scan(root) if records is None else records
    if case_ids is not None:
      keep = set(case_ids)
      records = [r for r in records if r.case_id in keep]
    self.records = records
    self._has_tumour = None

  @classmethod
  def from_config(cls, root: str, data_cfg, workdir: str = ""):
    del workdir
    return cls(root, in_channels=data_cfg.in_channels)

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    rec = self.records[i]
    image, mask = load_pair(rec, self.in_channels)
    return {"image": image, "mask": mask, "case_id": rec.case_id, "slice": rec.index}

  def sample_fingerprint(self, i: int) -> str:
    rec = self.records[i]
    return (f"lgg|{self.in_channels}|{rec!r}|"
            f"{files_fingerprint(rec.image_path, rec.mask_path)}")

  def subset(self, case_ids) -> "LGGSource":
    return LGGSource(self.root, case_ids, self.in_channels, records=self.records)

  def case_ids(self) -> list[str]:
    return sorted({r.case_id for r in self.records})

  class_names = ("tumour",)

  def scored_volumes(self, image_size: int = 0) -> list[VolumeRef]:
    """One volume per patient, slices in order. kaggle_3m's tifs carry no spacing: pixels."""
    del image_size
    return group_slices([r.case_id for r in self.records], [r.index for r in self.records])

  def has_tumour(self) -> np.ndarray:
    """Per slice, whether its mask has any foreground. Reads every mask once per source object
    (masks are small; the split that uses it is saved), then remembers the answer."""
    if self._has_tumour is None:
      self._has_tumour = np.array([(read_tif(r.mask_path) > 0).any() for r in self.records])
    return self._has_tumour

  def sample_weights(self) -> np.ndarray:
    """1 / (number of slices with the same has-tumour label), per slice."""
    return inverse_frequency(self.has_tumour().tolist())

  def case_strata(self) -> dict[str, int]:
    """1 for patients with any tumour pixel, else 0: the stratification key for splits."""
    strata = {c: 0 for c in self.case_ids()}
    for rec, has in zip(self.records, self.has_tumour(), strict=True):
      strata[rec.case_id] |= int(has)
    return strata
