import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxseg import losses, metrics

BIG = 30.0  # logit that makes a probability of 1 - 1e-13


def _logits(pred):
  return jnp.where(jnp.asarray(pred, bool), BIG, -BIG)


def test_confusion_and_dice_iou_by_hand():
  # 1 example, 4 pixels: pred 1 1 0 0, true 1 0 1 0 -> inter 1, pred 2, true 2
  pred = np.array([1, 1, 0, 0], bool).reshape(1, 2, 2, 1)
  true = np.array([1, 0, 1, 0], np.float32).reshape(1, 2, 2, 1)
  counts = np.asarray(metrics.confusion(_logits(pred), true, "binary"))
  np.testing.assert_array_equal(counts, [[[1, 2, 2]]])
  dice, iou = metrics.dice_iou(counts)
  assert dice[0, 0] == pytest.approx(0.5) and iou[0, 0] == pytest.approx(1 / 3)


def test_empty_mask_and_empty_prediction_scores_one_and_false_positive_zero():
  empty = np.zeros((2, 2, 2, 1), np.float32)
  pred = np.zeros((2, 2, 2, 1), bool)
  pred[1, 0, 0] = True  # second example: one false positive
  counts = np.asarray(metrics.confusion(_logits(pred), empty, "binary"))
  dice, iou = metrics.dice_iou(counts)
  np.testing.assert_array_equal(dice[:, 0], [1.0, 0.0])
  np.testing.assert_array_equal(iou[:, 0], [1.0, 0.0])


def test_summarize_global_per_image_per_case():
  # case A: two images (inter, pred, true) = (1,2,2) and (3,3,3); case B: one (0,1,0)
  counts = np.array([[[1, 2, 2]], [[3, 3, 3]], [[0, 1, 0]]], np.float32)
  s = metrics.summarize(counts, ["A", "A", "B"])
  # global: inter 4, pred 6, true 5 -> dice 8/11, iou 4/7
  assert s["dice"] == pytest.approx(8 / 11) and s["iou"] == pytest.approx(4 / 7)
  # per image: 0.5, 1, 0
  assert s["dice_per_image"] == pytest.approx(0.5)
  # per case: A (4,5,5) -> 0.8; B (0,1,0) -> 0
  assert s["cases"] == {"A": pytest.approx(0.8), "B": 0.0}
  assert s["dice_per_case"] == pytest.approx(0.4) and s["num_images"] == 3


def test_threshold_is_applied_to_probabilities():
  logits = jnp.full((1, 1, 2, 1), 0.5)  # sigmoid 0.62
  true = jnp.ones((1, 1, 2, 1))
  assert metrics.confusion(logits, true, "binary", threshold=0.5)[0, 0, 1] == 2
  assert metrics.confusion(logits, true, "binary", threshold=0.7)[0, 0, 1] == 0


def test_bce_matches_formula():
  logits = jnp.array([0.0, 2.0, -1.0, 3.0]).reshape(1, 2, 2, 1)
  y = jnp.array([0.0, 1.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  p = 1 / (1 + np.exp(-np.asarray(logits)))
  expected = -np.mean(np.asarray(y) * np.log(p) + (1 - np.asarray(y)) * np.log(1 - p))
  assert losses.cross_entropy(logits, y, "binary") == pytest.approx(expected, rel=1e-5)


def test_soft_dice_values():
  y = jnp.array([1.0, 1.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
  perfect = losses.soft_dice(_logits(np.asarray(y) > 0), y, "binary", smooth=0.0)
  assert perfect == pytest.approx(0.0, abs=1e-6)
  # probabilities 0.5 everywhere: 2*1 / (2 + 2) = 0.5 -> loss 0.5
  half = losses.soft_dice(jnp.zeros_like(y), y, "binary", smooth=0.0)
  assert half == pytest.approx(0.5, abs=1e-6)
  # empty mask, empty prediction: smoothing makes it a perfect score, not 0/0
  empty = jnp.zeros_like(y)
  assert losses.soft_dice(_logits(np.zeros((1, 2, 2, 1))), empty, "binary") == pytest.approx(0, abs=1e-6)


def test_weights_drop_padding_rows_and_combined_loss():
  y = jnp.stack([jnp.ones((2, 2, 1)), jnp.zeros((2, 2, 1))])
  logits = jnp.stack([jnp.full((2, 2, 1), BIG), jnp.full((2, 2, 1), BIG)])  # row 2 all wrong
  w = jnp.array([1.0, 0.0])
  assert losses.cross_entropy(logits, y, "binary", weight=w) == pytest.approx(0, abs=1e-6)
  assert losses.cross_entropy(logits, y, "binary") > 10
  cfg = ConfigDict({"bce_weight": 0.6, "dice_weight": 0.4, "smooth": 1.0})
  y1 = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 2, 2, 1)
  z = jnp.zeros_like(y1)
  want = 0.6 * losses.cross_entropy(z, y1, "binary") + 0.4 * losses.soft_dice(z, y1, "binary", 1.0)
  assert losses.seg_loss(z, y1, "binary", cfg) == pytest.approx(float(want))


def test_multiclass_uses_argmax_and_one_hot():
  labels = jnp.array([[[0, 1], [2, 2]]])
  logits = jax_one_hot_logits(labels, 3)
  counts = np.asarray(metrics.confusion(logits, labels, "multiclass"))
  np.testing.assert_array_equal(counts[0], [[1, 1, 1], [1, 1, 1], [2, 2, 2]])
  assert losses.cross_entropy(logits, labels, "multiclass") == pytest.approx(0, abs=1e-6)


def jax_one_hot_logits(labels, k):
  return (jnp.eye(k)[labels] * 2 - 1) * BIG


@pytest.mark.parametrize("shape,labels_last_axis", [((3, 5, 4, 3), True), ((2, 3, 4, 5, 4), False)])
def test_multiclass_losses_gradient_and_counts_against_numpy(shape, labels_last_axis):
  """Softmax CE, soft Dice and the counts through the class-major [B, K, N] view
  (losses.per_channel_view) against numpy, 2-D and 3-D, labels as [B, ..., 1] or [B, ...]; and
  the CE's gradient, (softmax - one-hot) / (B * pixels), which the view's transposes must give
  back in the logits' layout."""
  rng = np.random.default_rng(1)
  k = shape[-1]
  logits = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, k, size=shape[:-1])
  mask = labels[..., None] if labels_last_axis else labels
  axes = tuple(range(1, len(shape) - 1))
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  t = np.eye(k)[labels]
  ce = -(np.log(p) * t).sum(-1).mean(axes)  # [B]
  dice = (2 * (p * t).sum(axes) + 1) / (p.sum(axes) + t.sum(axes) + 1)  # [B, K]
  pred = np.eye(k)[p.argmax(-1)]
  counts = np.stack([(pred * t).sum(axes), pred.sum(axes), t.sum(axes)], -1)
  w = np.array([1.0, 0.0, 1.0][:shape[0]], np.float32)
  assert losses.cross_entropy(logits, mask, "multiclass") == pytest.approx(ce.mean(), rel=1e-5)
  assert losses.cross_entropy(logits, mask, "multiclass", weight=w) == pytest.approx(
      (ce * w).sum() / w.sum(), rel=1e-5)
  assert losses.soft_dice(logits, mask, "multiclass") == pytest.approx(1 - dice.mean(), rel=1e-5)
  np.testing.assert_array_equal(metrics.confusion(logits, mask, "multiclass"), counts)
  grad = jax.grad(lambda x: losses.cross_entropy(x, mask, "multiclass"))(logits)
  np.testing.assert_allclose(grad, (p - t) / (labels.size), rtol=1e-4, atol=1e-8)


def test_multiclass_cross_entropy_gradient_has_no_scatter():
  """The label's logit is a sum against the one-hot targets: a gather there (optax's integer-
  label CE) transposes to a scatter of the mean's constant cotangent, which XLA constant-folds
  at compile time, element by element (10 s of the 3-D BraTS step's compile)."""
  z = jnp.zeros((2, 8, 8, 4))
  y = jnp.zeros((2, 8, 8, 1), jnp.uint8)
  hlo = jax.jit(jax.grad(lambda z: losses.seg_loss(
      z, y, "multiclass", ConfigDict(
          {"bce_weight": 1.0, "dice_weight": 1.0, "smooth": 1.0})))).lower(z).as_text()
  assert "scatter" not in hlo and "gather" not in hlo


@pytest.mark.parametrize("shape", [(3, 5, 4, 1), (3, 5, 4, 3), (2, 3, 4, 5, 1)])
def test_losses_and_counts_per_channel_against_numpy(shape):
  """One sigmoid channel is summed through a flat [B, 1, N] view (losses.per_channel_view), more
  channels in place; both must give numpy's per-example, per-channel sums (2-D and 3-D)."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=shape).astype(np.float32)
  y = (rng.random(shape) < 0.4).astype(np.float32)
  axes = tuple(range(1, len(shape) - 1))
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axes).mean(-1)  # [B]
  dice = (2 * (p * y).sum(axes) + 1) / (p.sum(axes) + y.sum(axes) + 1)  # [B, K]
  pred = p > 0.5
  counts = np.stack([(pred * y).sum(axes), pred.sum(axes), y.sum(axes)], -1)
  w = np.array([1.0, 0.0, 1.0][:shape[0]], np.float32)
  for task in ("binary", "multilabel"):
    assert losses.cross_entropy(logits, y, task) == pytest.approx(bce.mean(), rel=1e-5)
    assert losses.cross_entropy(logits, y, task, weight=w) == pytest.approx(
        (bce * w).sum() / w.sum(), rel=1e-5)
    assert losses.soft_dice(logits, y, task) == pytest.approx(1 - dice.mean(), rel=1e-5)
    np.testing.assert_array_equal(metrics.confusion(logits, y, task), counts)
