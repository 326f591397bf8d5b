"""Run-length encoding as the UW-Madison GI competition defines it.

"start length start length ...", starts 1-based, over the image flattened row-major
(C order, [H, W] -> H*W); an empty string is an empty mask.
"""

import numpy as np


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
  """RLE -> uint8 [H, W] in {0, 1}. Raises ValueError on malformed runs or runs off the image."""
  flat = np.zeros(shape[0] * shape[1], np.uint8)
  if not isinstance(rle, str) or not rle.strip():
    return flat.reshape(shape)
  try:
    nums = np.asarray(rle.split(), dtype=np.int64)
  except ValueError as e:
    raise ValueError(f"RLE has a non-integer token: {e}") from None
  if len(nums) % 2:
    raise ValueError(f"RLE has an odd number of values ({len(nums)})")
  starts, lengths = nums[0::2] - 1, nums[1::2]
  if (starts < 0).any() or (lengths <= 0).any():
    raise ValueError("RLE has a start below 1 or a non-positive length")
  ends = starts + lengths
  if ends.max() > flat.size:
    raise ValueError(f"RLE run ends at pixel {int(ends.max())} but the image has {flat.size} "
                     f"({shape[0]}x{shape[1]})")
  # Mark run boundaries and integrate, instead of a Python loop over runs.
  delta = np.zeros(flat.size + 1, np.int32)
  np.add.at(delta, starts, 1)
  np.add.at(delta, ends, -1)
  return (np.cumsum(delta[:-1]) > 0).astype(np.uint8).reshape(shape)


def encode(mask: np.ndarray) -> str:
  """[H, W] binary mask -> RLE string ('' for an empty mask)."""
  flat = np.concatenate([[0], (np.asarray(mask).reshape(-1) > 0).astype(np.int8), [0]])
  changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # 1-based run starts and ends
  starts, ends = changes[0::2], changes[1::2]
  return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends, strict=True))
