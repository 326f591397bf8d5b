"""One reader per on-disk format. Every source offers len / getitem / subset / case_ids /
case_strata / sample_weights; the 2-D ones also `sample_fingerprint(i)`, what sample i is made
of (jaxseg.data.sample_cache keys its files by it). The helpers below are the weighting rule and
the file fingerprint they share."""

import collections
import dataclasses
import os

import numpy as np

from jaxseg.errors import DataError


def inverse_frequency(keys) -> np.ndarray:
  """1 / (number of samples with the same key), per sample: each key gets equal total weight."""
  keys = list(keys)
  counts = collections.Counter(keys)
  return np.array([1.0 / counts[k] for k in keys])


def files_fingerprint(*paths: str) -> str:
  """Each file's path, size and modification time: changes when any of them is rewritten."""
  parts = []
  for path in paths:
    try:
      st = os.stat(path)
    except OSError as e:
      raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    parts.append(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}")
  return "|".join(parts)


@dataclasses.dataclass(frozen=True)
class VolumeRef:
  """One scored volume of a source: its samples in order (one 3-D sample, or a stack of 2-D
  slices) and its voxel spacing in array order (mm; None when the format does not record it)."""

  key: str
  indices: tuple[int, ...]
  spacing: tuple[float, ...] | None = None


def group_slices(keys, order, spacing_of=lambda key: None) -> list[VolumeRef]:
  """Slices grouped by volume key and sorted by `order` (slice number) within each volume."""
  groups = collections.defaultdict(list)
  for i, (key, n) in enumerate(zip(keys, order, strict=True)):
    groups[key].append((n, i))
  return [VolumeRef(key, tuple(i for _, i in sorted(groups[key])), spacing_of(key))
          for key in sorted(groups)]
