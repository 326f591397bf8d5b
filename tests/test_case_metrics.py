"""Per-case scores against values worked out by hand."""

import math

import numpy as np
import pytest

from jaxseg import case_metrics as cm


def _mask(shape, *points):
  m = np.zeros(shape, bool)
  for p in points:
    m[p] = True
  return m


def test_hd95_of_single_voxels_is_their_distance_in_spacing_units():
  a, b = _mask((8, 8), (0, 0)), _mask((8, 8), (3, 4))
  assert cm.hd95(a, b) == pytest.approx(5.0)  # 3-4-5 triangle
  assert cm.hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(6**2 + 4**2))


def test_hd95_of_a_shifted_line_is_the_shift():
  a = np.zeros((12, 20), bool)
  a[2, 3:17] = True
  b = np.roll(a, 3, axis=0)
  assert cm.hd95(a, b) == pytest.approx(3.0)
  assert cm.hd95(a, b, spacing=(1.5, 1.0)) == pytest.approx(4.5)


def test_hd95_ignores_one_outlier_in_twenty_one_surface_points():
  # Truth: a 20-voxel line. Prediction: the line plus one voxel 10 rows away. Directed
  # distances pred->truth are twenty 0s and one 10; numpy's 95th percentile of 21 sorted values
  # sits at index 0.95 * 20 = 19, a 0. The plain Hausdorff distance would be 10.
  truth = np.zeros((15, 20), bool)
  truth[0, :] = True
  pred = truth.copy()
  pred[10, 5] = True
  assert cm.hd95(pred, truth) == 0.0
  # Three outliers in 23 points push the percentile (index 20.9) onto them.
  pred[10, 6] = pred[10, 7] = True  # a 3-voxel segment, every voxel on its surface, 10 away
  assert cm.hd95(pred, truth) == pytest.approx(10.0)


def test_hd95_3d_uses_surfaces_not_interiors():
  truth = np.zeros((9, 9, 9), bool)
  truth[2:7, 2:7, 2:7] = True  # a 5-cube
  pred = np.zeros_like(truth)
  pred[2:7, 2:7, 4:9] = True  # the same cube moved 2 voxels along the last axis
  # Every surface voxel of one cube lies within 2 voxels of the other's surface; the far faces
  # are exactly 2 away, and they hold more than 5 % of the surface.
  assert cm.hd95(pred, truth) == pytest.approx(2.0)


def test_empty_masks_follow_the_documented_conventions():
  empty, one = np.zeros((4, 4), bool), _mask((4, 4), (1, 1))
  s = cm.binary_scores(empty, empty)
  assert s == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0}
  s = cm.binary_scores(empty, one)  # missed everything
  assert s["dice"] == 0 and s["recall"] == 0 and math.isnan(s["precision"])
  assert math.isnan(s["hd95"])
  s = cm.binary_scores(one, empty)  # false alarm
  assert s["dice"] == 0 and s["precision"] == 0 and math.isnan(s["recall"])


def test_scores_and_aggregate_by_hand():
  truth = np.zeros((10, 10), bool)
  truth[0:4, 0:5] = True  # 20 voxels
  pred = np.zeros_like(truth)
  pred[0:4, 0:3] = True  # 12 voxels, all inside
  pred[9, 9] = True  # one false positive
  s = cm.binary_scores(pred, truth)
  assert s["dice"] == pytest.approx(2 * 12 / 33)
  assert s["iou"] == pytest.approx(12 / 21)
  assert s["precision"] == pytest.approx(12 / 13) and s["recall"] == pytest.approx(12 / 20)

  # Multiclass: classes 1 and 2 scored, background left out.
  labels = np.zeros((6, 6, 1), np.int32)
  labels[:3, :3] = 1
  labels[4:, 4:] = 2
  per_class = cm.case_scores(labels, labels, "multiclass", 3)
  assert [c["dice"] for c in per_class] == [1.0, 1.0]
  no_two = labels.copy()
  no_two[no_two == 2] = 0
  per_class = cm.case_scores(no_two, labels, "multiclass", 3)
  assert per_class[1]["dice"] == 0 and math.isnan(per_class[1]["hd95"])

  agg = cm.aggregate({"a": [{"dice": 0.5, "iou": 0.4, "precision": 1.0, "recall": 0.5,
                             "hd95": 2.0}],
                      "b": [{"dice": 1.0, "iou": 1.0, "precision": float("nan"),
                             "recall": 1.0, "hd95": float("nan")}]})
  assert agg["dice"]["mean"] == [0.75] and agg["dice"]["std"] == [0.25]
  assert agg["precision"]["mean"] == [1.0] and agg["precision"]["undefined"] == [1]
  assert agg["hd95"]["median"] == [2.0] and agg["num_cases"] == 2
