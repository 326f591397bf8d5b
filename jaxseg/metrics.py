"""Dice and IoU as additive sums, computed on device and divided once at the end.

`confusion` gives per-example, per-channel counts (intersection, predicted, true) of the
thresholded prediction. They add across batches, devices and hosts, so every reduction is a
plain sum, and from the same counts come:
- global (pooled) Dice / IoU: counts summed over all examples first;
- per-image mean Dice / IoU: the score of each example, then the mean;
- per-case Dice: counts summed over a patient's (volume's) slices first: Buda et al.'s figure.
An example (or case) with an empty mask and an empty prediction scores 1: nothing to find and
nothing wrongly found.
"""

import jax.numpy as jnp
import numpy as np

from jaxseg.losses import per_channel_view, probabilities, targets


def confusion(logits, mask, task: str, threshold: float = 0.5):
  """Per-example, per-channel [B, K, 3] float32 counts: (intersection, predicted, true)."""
  t, _, _ = per_channel_view(targets(mask, logits.shape[-1], task, logits.ndim), task)
  logits, channel, axes = per_channel_view(logits, task)
  p = probabilities(logits, task, channel)
  if task == "multiclass":
    pred = (p == p.max(channel, keepdims=True)).astype(jnp.float32)
  else:
    pred = (p > threshold).astype(jnp.float32)
  return jnp.stack([(pred * t).sum(axes), pred.sum(axes), t.sum(axes)], axis=-1)


def dice_iou(counts):
  """Dice and IoU from counts [..., 3] (works on numpy or jax arrays); empty/empty -> 1."""
  xp = jnp if isinstance(counts, jnp.ndarray) else np
  inter, pred, true = counts[..., 0], counts[..., 1], counts[..., 2]
  union = pred + true - inter
  empty = (pred + true) == 0
  dice = xp.where(empty, 1.0, 2 * inter / xp.maximum(pred + true, 1e-12))
  iou = xp.where(empty, 1.0, inter / xp.maximum(union, 1e-12))
  return dice, iou


def summarize(counts: np.ndarray, case_ids) -> dict:
  """Scores from per-example counts [N, K, 3] of one split; `case_ids` names each row's case."""
  counts = np.asarray(counts, np.float64)
  img_dice, img_iou = dice_iou(counts)  # [N, K]
  glob_dice, glob_iou = dice_iou(counts.sum(0))  # [K]
  cases = sorted(set(case_ids))
  index = {c: i for i, c in enumerate(cases)}
  per_case = np.zeros((len(cases),) + counts.shape[1:])
  np.add.at(per_case, np.array([index[c] for c in case_ids]), counts)
  case_dice, case_iou = dice_iou(per_case)
  return {
      "dice": float(glob_dice.mean()),
      "iou": float(glob_iou.mean()),
      "dice_per_image": float(img_dice.mean()),
      "iou_per_image": float(img_iou.mean()),
      "dice_per_case": float(case_dice.mean()),
      "iou_per_case": float(case_iou.mean()),
      "dice_per_channel": glob_dice.tolist(),
      "cases": {c: float(d) for c, d in zip(cases, case_dice.mean(-1), strict=False)},
      "num_images": int(len(counts)),
  }
