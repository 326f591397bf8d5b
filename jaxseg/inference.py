"""Inference beyond one forward pass: flip test-time augmentation, checkpoint ensembles and
sliding-window prediction of inputs larger than the training patch.

All three produce class probabilities and compose: the window runs the (ensembled, flipped)
prediction on each patch.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data.pipeline import pad_batch


def flip_sets(spatial_dims: int):
  """Every subset of the spatial axes of a [B, *spatial, C] batch: 4 passes in 2-D, 8 in 3-D
  (nnU-Net's mirroring)."""
  axes = range(1, spatial_dims + 1)
  return [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def make_probabilities(predict_fn, tta: bool):
  """(states, images) -> mean class probabilities over checkpoints and, with `tta`, flips.
  Each flip pass flips the input, predicts and flips the prediction back."""

  def probabilities(states, images):
    flips = flip_sets(images.ndim - 2) if tta else [()]
    total = 0.0
    for state in states:
      for axes in flips:
        x = jnp.flip(images, axes) if axes else images
        p = predict_fn(state, x)
        total = total + (jnp.flip(p, axes) if axes else p)
    return total / (len(states) * len(flips))

  return jax.jit(probabilities)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
  """Start offsets of windows of `patch` covering [0, size), stepping by patch * (1 - overlap);
  the last window is flush with the end."""
  if size <= patch:
    return [0]
  step = max(1, int(patch * (1 - overlap)))
  starts = list(range(0, size - patch, step))
  return starts + [size - patch]


def gaussian_weight(patch) -> np.ndarray:
  """nnU-Net's importance map: a Gaussian with sigma patch / 8 per axis, so window centres
  count more than their borders where windows overlap. Floored at 1e-3 of the peak: a volume
  corner covered by one window's corner alone still gets a well-defined average."""
  grids = np.meshgrid(*[np.arange(p) - (p - 1) / 2 for p in patch], indexing="ij")
  w = np.exp(-sum((g / (p / 8)) ** 2 for g, p in zip(grids, patch, strict=True)) / 2)
  return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def sliding_window(predict_batch, image: np.ndarray, patch, overlap: float = 0.5,
                   batch_size: int = 1) -> np.ndarray:
  """Class probabilities [*spatial, K] of `image` [*spatial, C] from a model that takes
  [batch_size, *patch, C]. Inputs smaller than the patch along an axis are zero-padded."""
  patch = tuple(patch)
  spatial = image.shape[:-1]
  pad = [(0, max(0, p - s)) for s, p in zip(spatial, patch, strict=True)] + [(0, 0)]
  padded = np.pad(image, pad)
  starts = list(itertools.product(*[window_starts(s, p, overlap)
                                    for s, p in zip(padded.shape[:-1], patch, strict=True)]))
  weight = gaussian_weight(patch)[..., None]
  total = norm = None
  for b in range(0, len(starts), batch_size):
    chunk = starts[b:b + batch_size]
    crops = [{"image": padded[tuple(slice(s, s + p) for s, p in zip(st, patch, strict=True))]}
             for st in chunk]
    probs = np.asarray(predict_batch(pad_batch(crops, batch_size)["image"]))
    if total is None:
      total = np.zeros(padded.shape[:-1] + probs.shape[-1:], np.float32)
      norm = np.zeros(padded.shape[:-1] + (1,), np.float32)
    for st, p in zip(chunk, probs, strict=False):
      region = tuple(slice(s, s + n) for s, n in zip(st, patch, strict=True))
      total[region] += p * weight
      norm[region] += weight
  out = total / np.maximum(norm, 1e-8)
  return out[tuple(slice(0, s) for s in spatial)]
