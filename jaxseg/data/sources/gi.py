"""Reader for the UW-Madison GI tract set (Kaggle 2022).

On disk: `train.csv` with rows `id,class,segmentation` (id `case123_day20_slice_0001`, class in
large_bowel / small_bowel / stomach, segmentation an RLE or empty) and 16-bit grey PNGs at
`train/case123/case123_day20/scans/slice_0001_<width>_<height>_<px>_<py>.png`. The three classes
become a three-channel multi-label mask in CLASSES order.

The index is built from the CSV and the file names (sizes come from the names, no pixel is read);
a CSV id with no image, an image of another size than its name says, or an RLE off the image is
an error naming the file or the CSV row. With `in_channels=3` the image is the slice and its two
neighbours of the same scan (2.5-D), clipped at the ends.
"""

import collections
import csv
import dataclasses
import os
import re

import numpy as np
from absl import logging
from PIL import Image

from jaxseg.data import rle
from jaxseg.data.sources import VolumeRef, files_fingerprint, group_slices, inverse_frequency
from jaxseg.errors import DataError

CLASSES = ("large_bowel", "small_bowel", "stomach")
SLICE_THICKNESS_MM = 3.0  # the competition's data description; not in the file names
_ID_RE = re.compile(r"^(?P<case>case\d+)_(?P<day>day\d+)_slice_(?P<n>\d+)$")
_NAME_RE = re.compile(r"^slice_(?P<n>\d+)_(?P<w>\d+)_(?P<h>\d+)_(?P<px>[\d.]+)_(?P<py>[\d.]+)\.png$")


@dataclasses.dataclass(frozen=True)
class GISlice:
  id: str
  case_id: str
  scan: str  # case123_day20
  index: int
  path: str
  shape: tuple[int, int]  # (height, width)
  spacing: tuple[float, float]
  rles: tuple[str, ...]  # one per class, '' when absent
  csv_rows: tuple[int, ...]  # line numbers in train.csv, for error messages

  @property
  def labels(self) -> tuple[bool, ...]:
    return tuple(bool(r.strip()) for r in self.rles)


def _scan_images(root: str) -> dict:
  """{(scan, slice number): (path, (h, w), (px, py))} from the file names under train/."""
  images = {}
  top = os.path.join(root, "train")
  if not os.path.isdir(top):
    raise DataError(f"{root}: no train/ folder (expected train/<case>/<case_day>/scans/*.png)")
  for case in os.listdir(top):
    for scan in os.listdir(os.path.join(top, case)):
      folder = os.path.join(top, case, scan, "scans")
      if not os.path.isdir(folder):
        continue
      for name in os.listdir(folder):
        m = _NAME_RE.match(name)
        if m:
          images[(scan, int(m["n"]))] = (os.path.join(folder, name),
                                         (int(m["h"]), int(m["w"])),
                                         (float(m["px"]), float(m["py"])))
  return images


def scan(root: str, drop_unlabelled: bool = True) -> list[GISlice]:
  csv_path = os.path.join(root, "train.csv")
  if not os.path.isfile(csv_path):
    raise DataError(f"{root}: no train.csv")
  images = _scan_images(root)
  rows = collections.defaultdict(dict)
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    if not {"id", "class", "segmentation"} <= set(reader.fieldnames or ()):
      raise DataError(f"{csv_path}: header must have id,class,segmentation; got {reader.fieldnames}")
    for line, row in enumerate(reader, start=2):
      if row["class"] not in CLASSES:
        raise DataError(f"{csv_path} line {line}: class {row['class']!r} not in {CLASSES}")
      if not _ID_RE.match(row["id"]):
        raise DataError(f"{csv_path} line {line}: id {row['id']!r} is not caseN_dayN_slice_NNNN")
      rows[row["id"]][row["class"]] = (row["segmentation"] or "", line)
  slices, dropped = [], 0
  for sid, by_class in rows.items():
    m = _ID_RE.match(sid)
    scan_name = f"{m['case']}_{m['day']}"
    key = (scan_name, int(m["n"]))
    lines = tuple(v[1] for v in by_class.values())
    if key not in images:
      raise DataError(f"{csv_path} line {lines[0]}: id {sid} has no image "
                      f"train/{m['case']}/{scan_name}/scans/slice_{m['n']}_*.png")
    path, shape, spacing = images[key]
    rles = tuple(by_class.get(c, ("", 0))[0] for c in CLASSES)
    for c, r in zip(CLASSES, rles, strict=True):
      try:
        rle.decode(r, shape)  # validates runs against the image size now, not mid-training
      except ValueError as e:
        raise DataError(f"{csv_path} line {by_class[c][1]} ({sid}, {c}): {e}") from None
    rec = GISlice(sid, m["case"], scan_name, int(m["n"]), path, shape, spacing, rles, lines)
    if any(rec.labels) or not drop_unlabelled:
      slices.append(rec)
    else:
      dropped += 1
  if not slices:
    raise DataError(f"{csv_path}: no labelled slices")
  if dropped:
    logging.info("%s: %d unlabelled slices dropped (data.drop_unlabelled), %d kept", csv_path,
                 dropped, len(slices))
  slices.sort(key=lambda s: (s.case_id, s.scan, s.index))
  return slices


def read_png16(path: str, shape: tuple[int, int]) -> np.ndarray:
  try:
    with Image.open(path) as im:
      image = np.asarray(im).astype(np.float32)
  except Exception as e:
    raise DataError(f"{path}: unreadable PNG ({type(e).__name__}: {e})") from e
  if image.shape[:2] != shape:
    raise DataError(f"{path}: image is {image.shape[:2]} (h, w) but its name says {shape}")
  return image if image.ndim == 2 else image[..., 0]


class GISource:
  """Grain random-access source over the labelled (or all) slices of the GI set."""

  def __init__(self, root: str, case_ids=None, in_channels: int = 1, drop_unlabelled=True,
               records=None):
    if in_channels not in (1, 3):
      raise DataError(f"GI data has 1 channel (or 3 as 2.5-D neighbours), not {in_channels}")
    self.root = root
    self.in_channels = in_channels
    self.drop_unlabelled = drop_unlabelled
    records = scan(root, drop_unlabelled) if records is None else records
    self.all_records = records  # neighbours may come from other splits' lists: same scan only
    if case_ids is not None:
      keep = set(case_ids)
      records = [r for r in records if r.case_id in keep]
    self.records = records
    self._by_scan = {(r.scan, r.index): r for r in self.all_records}
    self._neighbour_paths = {}  # (scan, index) -> path, for neighbours the CSV does not list

  @classmethod
  def from_config(cls, root: str, data_cfg, workdir: str = ""):
    del workdir
    return cls(root, in_channels=data_cfg.in_channels, drop_unlabelled=data_cfg.drop_unlabelled)

  def __len__(self) -> int:
    return len(self.records)

  def _slice_path(self, rec: GISlice, index: int) -> str:
    other = self._by_scan.get((rec.scan, index))
    if other is not None:
      return other.path
    key = (rec.scan, index)
    if key not in self._neighbour_paths:
      folder = os.path.dirname(rec.path)  # unlabelled neighbours are still on disk
      found = [os.path.join(folder, name) for name in os.listdir(folder)
               if (m := _NAME_RE.match(name)) and int(m["n"]) == index]
      self._neighbour_paths[key] = found[0] if found else rec.path
    return self._neighbour_paths[key]

  def _image_paths(self, rec: GISlice) -> list[str]:
    if self.in_channels == 1:
      return [rec.path]
    return [self._slice_path(rec, rec.index + d) for d in (-1, 0, 1)]

  def __getitem__(self, i: int) -> dict:
    rec = self.records[i]
    image = np.stack([read_png16(p, rec.shape) for p in self._image_paths(rec)], axis=-1)
    mask = np.stack([rle.decode(r, rec.shape) for r in rec.rles], axis=-1).astype(np.uint8)
    return {"image": image, "mask": mask, "case_id": rec.case_id, "slice": rec.index}

  def sample_fingerprint(self, i: int) -> str:
    """Sample i's record (id, size, run-length masks) and its PNGs' fingerprints."""
    rec = self.records[i]
    return f"gi|{self.in_channels}|{rec!r}|{files_fingerprint(*self._image_paths(rec))}"

  def subset(self, case_ids) -> "GISource":
    return GISource(self.root, case_ids, self.in_channels, self.drop_unlabelled,
                    records=self.all_records)

  def case_ids(self) -> list[str]:
    return sorted({r.case_id for r in self.records})

  class_names = CLASSES

  def record(self, i: int) -> GISlice:
    """The slice behind sample i: its competition id and original (height, width)."""
    return self.records[i]

  def scored_volumes(self, image_size: int = 0) -> list[VolumeRef]:
    """One volume per scan (case and day), slices in order. Spacing: the competition's 3 mm
    slice thickness, and the pixel spacing from the file name scaled to the model's image size
    (the spacing of the first slice; a scan's slices share it)."""
    first = {}
    for r in self.records:
      first.setdefault(r.scan, r)

    def spacing(scan):
      r = first[scan]
      (h, w), (px, py) = r.shape, r.spacing
      return (SLICE_THICKNESS_MM, py * h / (image_size or h), px * w / (image_size or w))

    return group_slices([r.scan for r in self.records], [r.index for r in self.records], spacing)

  def case_strata(self) -> dict[str, int]:
    """The case's organ combination (bit mask of classes present in any slice)."""
    out = collections.defaultdict(int)
    for r in self.records:
      out[r.case_id] |= sum(1 << k for k, on in enumerate(r.labels) if on)
    return dict(out)

  def sample_weights(self) -> np.ndarray:
    """1 / (number of slices with the same organ combination), per slice."""
    return inverse_frequency(r.labels for r in self.records)
