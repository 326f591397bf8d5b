"""Reader for the Medical Segmentation Decathlon layout (Task01 BrainTumour = BraTS volumes).

On disk: `dataset.json` ("modality", "labels", "training": [{"image", "label"}, ...]),
`imagesTr/*.nii.gz` (4-D, X x Y x Z x modalities) and `labelsTr/*.nii.gz` (3-D, values in the
declared labels). Each volume is preprocessed once, the way the BraTS project did: centre crop to
`data.crop` (D, H, W), integer down-sampling (`data.downsample`; mean for images, strided for
labels), per-modality z-score over the non-zero (brain) voxels, then cached as .npy beside the
run. Samples are whole volumes ([D, H, W, C], `data.depth > 0`) or axial slices ([H, W, C]) with
the chosen modalities; labels are integer class maps with a trailing axis ([..., 1]).
"""

import dataclasses
import json
import os

import numpy as np

from jaxseg.data.sources import VolumeRef, inverse_frequency
from jaxseg.errors import DataError


@dataclasses.dataclass(frozen=True)
class Volume:
  case_id: str
  image_path: str
  label_path: str


def scan(root: str):
  """(volumes, modality names, label names) from dataset.json, every file checked to exist."""
  meta_path = os.path.join(root, "dataset.json")
  if not os.path.isfile(meta_path):
    raise DataError(f"{root}: no dataset.json (expected the Medical Segmentation Decathlon layout)")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    modalities = [meta["modality"][k] for k in sorted(meta["modality"], key=int)]
    labels = [meta["labels"][k] for k in sorted(meta["labels"], key=int)]
    entries = meta["training"]
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{meta_path}: needs 'modality', 'labels' and 'training' ({e})") from e
  volumes = []
  for i, entry in enumerate(entries):
    paths = [os.path.normpath(os.path.join(root, entry[k])) for k in ("image", "label")]
    for p in paths:
      if not os.path.isfile(p):
        raise DataError(f"{meta_path}: training[{i}] names {p}, which does not exist")
    case = os.path.basename(paths[0]).split(".")[0]
    volumes.append(Volume(case, *paths))
  if not volumes:
    raise DataError(f"{meta_path}: 'training' is empty")
  return sorted(volumes, key=lambda v: v.case_id), modalities, labels


def _center_crop(a: np.ndarray, size) -> np.ndarray:
  """Crops (or zero-pads) the first len(size) axes to `size`, centred."""
  out = a
  for axis, s in enumerate(size):
    n = out.shape[axis]
    if n >= s:
      start = (n - s) // 2
      out = np.take(out, np.arange(start, start + s), axis=axis)
    else:
      pad = [(0, 0)] * out.ndim
      pad[axis] = ((s - n) // 2, s - n - (s - n) // 2)
      out = np.pad(out, pad)
  return out


def brain_box(image: np.ndarray) -> tuple[slice, ...]:
  """Bounding box of the non-zero voxels of [D, H, W, C] (skull-stripped data: the brain)."""
  nonzero = np.abs(image).sum(-1) > 0
  if not nonzero.any():
    return tuple(slice(None) for _ in range(3))
  box = []
  for axis in range(3):
    hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
    box.append(slice(int(hits[0]), int(hits[-1]) + 1))
  return tuple(box)


def preprocess(image: np.ndarray, label: np.ndarray, crop, factor: int, to_brain=False):
  """[X, Y, Z, C] image and [X, Y, Z] label -> float32 [D, H, W, C] and uint8 [D, H, W].
  With `to_brain`, first cut to the brain's bounding box (then centre crop / pad to `crop`)."""
  image = np.transpose(image, (2, 1, 0, 3)).astype(np.float32)  # axial slices first: Z, Y, X
  label = np.transpose(label, (2, 1, 0))
  if to_brain:
    box = brain_box(image)
    image, label = image[box], label[box]
  if crop:
    image, label = _center_crop(image, crop), _center_crop(label, crop)
  if factor > 1:
    d, h, w = (s // factor * factor for s in label.shape)
    image = image[:d, :h, :w].reshape(d // factor, factor, h // factor, factor, w // factor,
                                      factor, -1).mean(axis=(1, 3, 5))
    label = label[:d:factor, :h:factor, :w:factor]
  brain = np.abs(image).sum(-1) > 0
  for c in range(image.shape[-1]):  # z-score over the brain, background stays 0
    vals = image[..., c][brain]
    if vals.size:
      image[..., c] = np.where(brain, (image[..., c] - vals.mean()) / max(vals.std(), 1e-6), 0)
  return image, label.astype(np.uint8)


class DecathlonSource:
  """Volumes or axial slices of a Decathlon task; preprocessed volumes cached as .npy."""

  def __init__(self, root: str, cache_dir: str, crop=(), downsample: int = 1, depth: int = 0,
               modalities=(), case_ids=None, _scanned=None, crop_to_brain: bool = False):
    self.root, self.cache_dir = root, cache_dir
    self.crop_to_brain = crop_to_brain
    if crop_to_brain and not crop:
      raise ValueError("data.crop_to_brain needs data.crop: brain boxes differ per volume, "
                       "and samples need one shape")
    self.crop, self.downsample, self.depth = tuple(crop), downsample, depth
    volumes, self.modality_names, self.label_names = _scanned or scan(root)
    self._scanned = (volumes, self.modality_names, self.label_names)
    self.modalities = tuple(modalities) or tuple(range(len(self.modality_names)))
    if max(self.modalities) >= len(self.modality_names):
      raise DataError(f"data.modalities {self.modalities}: the task has "
                      f"{len(self.modality_names)} ({self.modality_names})")
    if case_ids is not None:
      keep = set(case_ids)
      volumes = [v for v in volumes if v.case_id in keep]
    self.volumes = volumes
    self.in_channels = len(self.modalities)
    # Slice mode indexes (volume, z); the slice count comes from the crop (or one volume's file).
    self._depth = self._volume_depth() if volumes and not depth else 0

  @classmethod
  def from_config(cls, root: str, data_cfg, workdir: str = ""):
    cache = data_cfg.cache_dir or os.path.join(workdir or root, "preprocessed")
    return cls(root, cache, tuple(data_cfg.crop), data_cfg.downsample, data_cfg.depth,
               tuple(data_cfg.modalities), crop_to_brain=data_cfg.crop_to_brain)

  def _volume_depth(self) -> int:
    if self.crop:
      return self.crop[0] // self.downsample
    return self.load(0)[1].shape[0]

  def __len__(self) -> int:
    return len(self.volumes) if self.depth else len(self.volumes) * self._depth

  def load(self, v: int):
    """Preprocessed (image [D, H, W, C_all], label [D, H, W]) of volume v, memory-mapped."""
    vol = self.volumes[v]
    tag = (f"{vol.case_id}_{'brain_' if self.crop_to_brain else ''}"
           f"{'x'.join(map(str, self.crop)) or 'full'}_{self.downsample}")
    img_path = os.path.join(self.cache_dir, f"{tag}_image.npy")
    lab_path = os.path.join(self.cache_dir, f"{tag}_label.npy")
    if not (os.path.exists(img_path) and os.path.exists(lab_path)):
      image, label = self._read(vol)
      image, label = preprocess(image, label, self.crop, self.downsample, self.crop_to_brain)
      os.makedirs(self.cache_dir, exist_ok=True)
      for path, array in ((img_path, image), (lab_path, label)):
        tmp = f"{path}.{os.getpid()}.tmp.npy"  # several workers may preprocess at once
        np.save(tmp, array)
        os.replace(tmp, path)
    return np.load(img_path, mmap_mode="r"), np.load(lab_path, mmap_mode="r")

  def _read(self, vol: Volume):
    import nibabel as nib
    arrays = []
    for path in (vol.image_path, vol.label_path):
      try:
        arrays.append(np.asarray(nib.load(path).dataobj))
      except Exception as e:
        raise DataError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
    image, label = arrays
    if image.ndim != 4 or image.shape[-1] != len(self.modality_names):
      raise DataError(f"{vol.image_path}: expected X x Y x Z x {len(self.modality_names)} "
                      f"(modalities {self.modality_names}), got {image.shape}")
    if label.shape != image.shape[:3]:
      raise DataError(f"{vol.label_path}: label shape {label.shape} does not match image "
                      f"{vol.image_path} {image.shape[:3]}")
    bad = np.setdiff1d(np.unique(label), np.arange(len(self.label_names)))
    if bad.size:
      raise DataError(f"{vol.label_path}: label values {bad.tolist()} outside the declared "
                      f"classes 0..{len(self.label_names) - 1} ({self.label_names})")
    return image, label

  def __getitem__(self, i: int) -> dict:
    if self.depth:
      image, label = self.load(i)
      case = self.volumes[i].case_id
      z = -1
    else:
      v, z = divmod(i, self._depth)
      image, label = self.load(v)
      image, label, case = image[z], label[z], self.volumes[v].case_id
    image = np.asarray(image[..., list(self.modalities)], np.float32)
    return {"image": image, "mask": np.asarray(label, np.uint8)[..., None], "case_id": case,
            "slice": z}

  def subset(self, case_ids) -> "DecathlonSource":
    return DecathlonSource(self.root, self.cache_dir, self.crop, self.downsample, self.depth,
                           self.modalities, case_ids, self._scanned, self.crop_to_brain)

  def case_ids(self) -> list[str]:
    return [v.case_id for v in self.volumes]

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(self.label_names[1:])  # background is not scored

  def scored_volumes(self, image_size: int = 0) -> list[VolumeRef]:
    """Each case: its one 3-D sample, or its axial slices in order. Spacing from the NIfTI
    header (X, Y, Z -> array order Z, Y, X), times the down-sampling factor, and for slices
    the in-plane resize to `image_size`."""
    out = []
    for v, vol in enumerate(self.volumes):
      indices = (v,) if self.depth else tuple(range(v * self._depth, (v + 1) * self._depth))
      out.append(VolumeRef(vol.case_id, indices, self._spacing(v, image_size)))
    return out

  def _spacing(self, v: int, image_size: int) -> tuple[float, ...]:
    import nibabel as nib
    zooms = nib.load(self.volumes[v].image_path).header.get_zooms()[:3]
    spacing = [z * self.downsample for z in reversed(zooms)]
    if not self.depth and image_size:
      shape = self.load(v)[1].shape
      spacing[1:] = [s * n / image_size for s, n in zip(spacing[1:], shape[1:], strict=True)]
    return tuple(float(s) for s in spacing)

  def case_strata(self) -> dict[str, int]:
    """Which tumour classes a volume has, as a bit mask (reads every label once)."""
    return {vol.case_id: _classes_present(self.load(v)[1]) for v, vol in enumerate(self.volumes)}

  def sample_weights(self) -> np.ndarray:
    """1 / (number of samples with the same set of tumour classes), per volume or slice."""
    keys = []
    for v in range(len(self.volumes)):
      label = np.asarray(self.load(v)[1])
      keys += [_classes_present(label)] if self.depth else [_classes_present(s) for s in label]
    return inverse_frequency(keys)


def _classes_present(label: np.ndarray) -> int:
  """Bit mask of the non-background classes in a label array."""
  return int(sum(1 << int(k) for k in np.unique(label) if k > 0))
