"""Segmentation losses: pure functions of (logits, mask) for one task kind.

Tasks: 'binary' and 'multilabel' use sigmoid per channel with mask [B, ..., K] in {0, 1};
'multiclass' uses softmax over K classes with integer labels [B, ..., 1] (or [B, ...]). Every loss reduces in
float32 and takes an optional per-example `weight` (0 for padding rows).
"""

import jax
import jax.numpy as jnp
import optax


def probabilities(logits, task: str):
  logits = logits.astype(jnp.float32)
  return jax.nn.softmax(logits, -1) if task == "multiclass" else jax.nn.sigmoid(logits)


def class_labels(mask, logits_ndim: int):
  """Integer labels [B, ...] from a multi-class mask stored as [B, ..., 1] or [B, ...]."""
  if mask.ndim == logits_ndim:
    mask = mask[..., 0]
  return mask.astype(jnp.int32)


def targets(mask, num_channels: int, task: str, logits_ndim: int):
  """The mask as per-channel float targets [B, ..., K] (one-hot for multi-class)."""
  if task == "multiclass":
    return jax.nn.one_hot(class_labels(mask, logits_ndim), num_channels, dtype=jnp.float32)
  return mask.astype(jnp.float32)


def per_channel_view(a, task: str):
  """(view, axes): `a` ([B, ..., K]) and the axes whose sum gives [B, K]. A single sigmoid
  channel is viewed as [B, 1, N]: XLA's CPU backend vectorises element-wise loops along the
  minor axis, and a minor axis of size 1 left the loss's loops scalar (UNeXt's loss at
  8 x 256^2 x 1, value and gradient: 8.3 against 3.0 ms, 2026-11-26)."""
  if task != "multiclass" and a.shape[-1] == 1:
    return a.reshape(a.shape[0], 1, -1), (2,)
  return a, tuple(range(1, a.ndim - 1))


def _weighted_mean(per_example, weight):
  if weight is None:
    return per_example.mean()
  return (per_example * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def cross_entropy(logits, mask, task: str, weight=None):
  """Mean BCE-with-logits (binary / multi-label) or softmax cross-entropy (multi-class)."""
  logits = logits.astype(jnp.float32)
  if task == "multiclass":
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(
        logits, class_labels(mask, logits.ndim))
    per_example = per_pixel.mean(axis=tuple(range(1, per_pixel.ndim)))
  else:
    logits, axes = per_channel_view(logits, task)
    mask, _ = per_channel_view(mask.astype(jnp.float32), task)
    per_example = optax.sigmoid_binary_cross_entropy(logits, mask).mean(axes).mean(-1)
  return _weighted_mean(per_example, weight)


def soft_dice(logits, mask, task: str, smooth: float = 1.0, weight=None):
  """1 - mean over examples and channels of (2|P.T| + s) / (|P| + |T| + s), soft P.

  The smoothing term makes an empty mask with an empty prediction score 1 rather than 0/0.
  """
  t, _ = per_channel_view(targets(mask, logits.shape[-1], task, logits.ndim), task)
  logits, axes = per_channel_view(logits, task)
  p = probabilities(logits, task)
  inter = (p * t).sum(axes)
  dice = (2 * inter + smooth) / (p.sum(axes) + t.sum(axes) + smooth)  # [B, K]
  return 1.0 - _weighted_mean(dice.mean(-1), weight)


def seg_loss(logits, mask, task: str, loss_cfg, weight=None):
  """The configured mix: bce_weight * cross-entropy + dice_weight * soft Dice."""
  total = 0.0
  if loss_cfg.bce_weight:
    total += loss_cfg.bce_weight * cross_entropy(logits, mask, task, weight)
  if loss_cfg.dice_weight:
    total += loss_cfg.dice_weight * soft_dice(logits, mask, task, loss_cfg.smooth, weight)
  return total
