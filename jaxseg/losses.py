"""Segmentation losses: pure functions of (logits, mask) for one task kind.

Tasks: 'binary' and 'multilabel' use sigmoid per channel with mask [B, ..., K] in {0, 1};
'multiclass' uses softmax over K classes with integer labels [B, ..., 1] (or [B, ...]). Every loss reduces in
float32 and takes an optional per-example `weight` (0 for padding rows).
"""

import jax
import jax.numpy as jnp
import optax


def probabilities(logits, task: str, axis: int = -1):
  """Per-channel probabilities, the channels on `axis`: softmax over them (multi-class) or a
  sigmoid each."""
  logits = logits.astype(jnp.float32)
  if task == "multiclass":
    # As exp(z - logsumexp(z)), not jax.nn.softmax: the cross-entropy's logsumexp is then the
    # same computation, done once in the step.
    return jnp.exp(logits - jax.nn.logsumexp(logits, axis, keepdims=True))
  return jax.nn.sigmoid(logits)


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
  """(view, channel axis, axes): `a` ([B, ..., K]) viewed so that the losses and counts run fast
  on XLA's CPU backend, which vectorises element-wise loops and reductions along the minor axis,
  and the view's axes whose sum gives [B, K].

  Multi-class: [B, K, N] (one transpose), so that the softmax over K is element-wise work along
  N (in place, with K <= 4 on the minor axis, BraTS's CE + Dice at 32 x 160^2, value and
  gradient, ran 58-60 against 37-38 ms, 2026-11-27). A single sigmoid channel: [B, 1, N], a
  reshape (in place, UNeXt's loss at 8 x 256^2 x 1 ran 8.3 against 3.0 ms, 2026-11-26). More
  sigmoid channels stay in place: their work is element-wise per channel, and the transpose
  cost more than it saved (GI's three channels at 16 x 224^2: 27.6 against 32.6 ms)."""
  if task == "multiclass" or a.shape[-1] == 1:
    return jnp.moveaxis(a.reshape(a.shape[0], -1, a.shape[-1]), -1, 1), 1, (2,)
  return a, -1, tuple(range(1, a.ndim - 1))


def _weighted_mean(per_example, weight):
  if weight is None:
    return per_example.mean()
  return (per_example * weight).sum() / jnp.maximum(weight.sum(), 1.0)


def cross_entropy(logits, mask, task: str, weight=None):
  """Mean BCE-with-logits (binary / multi-label) or softmax cross-entropy (multi-class)."""
  t, _, _ = per_channel_view(targets(mask, logits.shape[-1], task, logits.ndim), task)
  z, channel, axes = per_channel_view(logits.astype(jnp.float32), task)
  if task == "multiclass":
    # The label's logit as a sum against the one-hot targets, not a gather (optax's
    # softmax_cross_entropy_with_integer_labels): the gather's [..., 0] transposes to a scatter
    # of the mean's constant cotangent, which XLA's constant folding evaluates at compile time
    # element by element (10 s of the 3-D BraTS step's compile, 1.8 s of the 2-D one's).
    per_example = (jax.nn.logsumexp(z, channel) - (z * t).sum(channel)).mean(-1)
  else:
    per_example = optax.sigmoid_binary_cross_entropy(z, t).mean(axes).mean(-1)
  return _weighted_mean(per_example, weight)


def soft_dice(logits, mask, task: str, smooth: float = 1.0, weight=None):
  """1 - mean over examples and channels of (2|P.T| + s) / (|P| + |T| + s), soft P.

  The smoothing term makes an empty mask with an empty prediction score 1 rather than 0/0.
  """
  t, _, _ = per_channel_view(targets(mask, logits.shape[-1], task, logits.ndim), task)
  logits, channel, axes = per_channel_view(logits, task)
  p = probabilities(logits, task, channel)
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
