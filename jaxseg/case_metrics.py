"""Per-case (per-patient, per-volume) scores as the literature reports them: Dice, IoU,
precision, recall and the 95th-percentile Hausdorff distance, per class, in physical units.

A case is a whole volume: a 3-D sample, or the stack of a patient's 2-D slices. Conventions
(those of MONAI and nnU-Net where they agree):
- class absent from both prediction and truth: Dice = IoU = precision = recall = 1, HD95 = 0;
- a ratio whose denominator is empty otherwise (precision with nothing predicted, recall with
  nothing to find) and HD95 with one side empty are undefined: NaN, left out of means, counted.
HD95 is the larger of the two directed 95th percentiles of surface-to-surface distances
(medpy's and MONAI's definition); surfaces are the voxels that a one-voxel, face-connected
erosion removes, and distances use the voxel spacing.
"""

import warnings

import numpy as np
from scipy import ndimage

SCORES = ("dice", "iou", "precision", "recall", "hd95")


def _surface(mask: np.ndarray) -> np.ndarray:
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask & ~ndimage.binary_erosion(mask, structure, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=None) -> float:
  """95th-percentile symmetric Hausdorff distance between two boolean masks (same shape)."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("nan")
  spacing = np.ones(pred.ndim) if spacing is None else np.asarray(spacing, np.float64)
  sp, st = _surface(pred), _surface(truth)
  # Distance of every voxel to the nearest surface voxel of the other mask.
  to_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
  return float(max(np.percentile(to_truth[sp], 95), np.percentile(to_pred[st], 95)))


def _ratio(num, den, both_empty):
  if both_empty:
    return 1.0
  return float(num / den) if den else float("nan")


def binary_scores(pred: np.ndarray, truth: np.ndarray, spacing=None) -> dict:
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  tp = float(np.logical_and(pred, truth).sum())
  npred, ntrue = float(pred.sum()), float(truth.sum())
  empty = npred == 0 and ntrue == 0
  return {"dice": _ratio(2 * tp, npred + ntrue, empty),
          "iou": _ratio(tp, npred + ntrue - tp, empty),
          "precision": _ratio(tp, npred, empty),
          "recall": _ratio(tp, ntrue, empty),
          "hd95": hd95(pred, truth, spacing)}


def class_masks(labels: np.ndarray, task: str, num_classes: int) -> list[np.ndarray]:
  """[..., K] binary channels (binary / multilabel) or [..., 1] class maps (multiclass: classes
  1..K-1, background left out) -> one boolean mask per scored class."""
  if task == "multiclass":
    return [labels[..., 0] == k for k in range(1, num_classes)]
  return [labels[..., k] > 0 for k in range(labels.shape[-1])]


def case_scores(pred: np.ndarray, truth: np.ndarray, task: str, num_classes: int,
                spacing=None) -> list[dict]:
  """Scores per class of one case; `pred` and `truth` in the layout `class_masks` takes."""
  return [binary_scores(p, t, spacing) for p, t in zip(
      class_masks(pred, task, num_classes), class_masks(truth, task, num_classes), strict=True)]


def aggregate(per_case: dict[str, list[dict]]) -> dict:
  """{case: [per-class scores]} -> for each score and class: mean, std, median over cases (NaN
  left out) and how many cases had it undefined; plus the class-mean of each mean."""
  cases = sorted(per_case)
  out = {}
  for score in SCORES:
    values = np.array([[c[score] for c in per_case[k]] for k in cases], np.float64)  # [N, K]
    with warnings.catch_warnings():  # all-NaN columns are expected and counted
      warnings.simplefilter("ignore", RuntimeWarning)
      mean = np.nanmean(values, 0)
      out[score] = {"mean": mean.tolist(), "std": np.nanstd(values, 0).tolist(),
                    "median": np.nanmedian(values, 0).tolist(),
                    "undefined": np.isnan(values).sum(0).tolist(),
                    "class_mean": float(np.nanmean(mean)) if np.isfinite(mean).any() else None}
  out["num_cases"] = len(cases)
  return out
