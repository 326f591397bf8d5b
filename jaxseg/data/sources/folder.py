"""A plain folder of images and masks, for users' own data (`data.source=folder`).

  ROOT/images/<name>.<png|tif|tiff|npy>
  ROOT/masks/<name>.<png|tif|tiff|npy>      (same <name>; the extension may differ)

Images are [H, W] or [H, W, C]; masks [H, W] (binary: > 0 is foreground; multiclass: integer
labels) or [H, W, K] (multilabel). `data.case_pattern`, a regular expression with one group
applied to <name>, names the patient: slices of one patient stay in one split and stack into
one volume for per-case scores, in name order (default: every image its own case).
"""

import os
import re

import numpy as np

from jaxseg.data.sources import VolumeRef, files_fingerprint, group_slices, inverse_frequency
from jaxseg.errors import DataError

EXTS = (".png", ".tif", ".tiff", ".npy")


def read_array(path: str) -> np.ndarray:
  """Any supported file as a numpy array, with the file named in any error."""
  try:
    if path.endswith(".npy"):
      return np.load(path, allow_pickle=False)
    if path.endswith((".tif", ".tiff")):
      import tifffile
      return tifffile.imread(path)
    from PIL import Image
    with Image.open(path) as im:
      return np.asarray(im)
  except Exception as e:
    raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _index(folder: str) -> dict:
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: no such folder (expected ROOT/images and ROOT/masks)")
  out = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in EXTS:
      if stem in out:
        raise DataError(f"{folder}: two files named {stem}.* ({os.path.basename(out[stem])}, "
                        f"{name})")
      out[stem] = os.path.join(folder, name)
  return out


class FolderSource:
  def __init__(self, root: str, in_channels: int, task: str = "binary", case_pattern: str = "",
               case_ids=None, _pairs=None):
    self.root, self.in_channels, self.task = root, in_channels, task
    self.case_pattern = case_pattern
    if _pairs is None:
      images, masks = _index(os.path.join(root, "images")), _index(os.path.join(root, "masks"))
      missing = sorted(set(images) - set(masks))
      if missing:
        raise DataError(f"{root}/images: no mask in {root}/masks for {len(missing)} image(s), "
                        f"e.g. {os.path.basename(images[missing[0]])}")
      if not images:
        raise DataError(f"{root}/images: no {'/'.join(EXTS)} files")
      pattern = re.compile(case_pattern) if case_pattern else None
      _pairs = [(stem, images[stem], masks[stem], self._case(stem, pattern))
                for stem in sorted(images)]
    self.all_pairs = _pairs
    keep = set(case_ids) if case_ids is not None else None
    self.pairs = [p for p in _pairs if keep is None or p[3] in keep]
    self._has_fg = None

  @staticmethod
  def _case(stem: str, pattern) -> str:
    if pattern is None:
      return stem
    m = pattern.search(stem)
    if not m or not m.groups():
      raise DataError(f"{stem}: data.case_pattern {pattern.pattern!r} does not match (it needs "
                      "one group naming the patient)")
    return m.group(1)

  @classmethod
  def from_config(cls, root: str, data_cfg, workdir: str = ""):
    del workdir
    return cls(root, data_cfg.in_channels, data_cfg.task, data_cfg.case_pattern)

  def __len__(self) -> int:
    return len(self.pairs)

  def sample_fingerprint(self, i: int) -> str:
    stem, image_path, mask_path, case = self.pairs[i]
    return (f"folder|{self.in_channels}|{self.task}|{stem}|{case}|"
            f"{files_fingerprint(image_path, mask_path)}")

  def __getitem__(self, i: int) -> dict:
    stem, image_path, mask_path, case = self.pairs[i]
    image = read_array(image_path)
    image = image[..., None] if image.ndim == 2 else image
    if image.ndim != 3 or image.shape[-1] < self.in_channels:
      raise DataError(f"{image_path}: shape {image.shape}; data.in_channels is "
                      f"{self.in_channels}")
    image = image[..., :self.in_channels].astype(np.float32)
    mask = read_array(mask_path)
    if mask.shape[:2] != image.shape[:2]:
      raise DataError(f"{mask_path}: mask {mask.shape[:2]} does not match image "
                      f"{image_path} {image.shape[:2]}")
    if mask.ndim == 3 and self.task != "multilabel":
      mask = mask[..., 0]  # RGB-saved single masks: any channel
    if self.task == "binary":
      mask = (mask > 0)[..., None]
    elif mask.ndim == 2:
      mask = mask[..., None]
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
      raise DataError(f"{mask_path}: mask values span {mask.min()}..{mask.max()}; labels must be "
                      "0..255")
    return {"image": image, "mask": mask.astype(np.uint8), "case_id": case, "slice": i}

  def subset(self, case_ids) -> "FolderSource":
    return FolderSource(self.root, self.in_channels, self.task, self.case_pattern, case_ids,
                        self.all_pairs)

  def case_ids(self) -> list[str]:
    return sorted({p[3] for p in self.pairs})

  def _foreground(self) -> list[int]:
    """Per image, a bit mask of the label values / channels present (reads each mask once)."""
    if self._has_fg is None:
      keys = []
      for i in range(len(self.pairs)):
        m = self[i]["mask"]
        if self.task == "multiclass":
          keys.append(int(sum(1 << int(v) for v in np.unique(m) if v > 0)))
        else:
          keys.append(int(sum(1 << k for k in range(m.shape[-1]) if m[..., k].any())))
      self._has_fg = keys
    return self._has_fg

  def case_strata(self) -> dict[str, int]:
    out = {c: 0 for c in self.case_ids()}
    for p, key in zip(self.pairs, self._foreground(), strict=True):
      out[p[3]] |= key
    return out

  def sample_weights(self) -> np.ndarray:
    return inverse_frequency(self._foreground())

  def scored_volumes(self, image_size: int = 0) -> list[VolumeRef]:
    del image_size
    return group_slices([p[3] for p in self.pairs], [p[0] for p in self.pairs])
