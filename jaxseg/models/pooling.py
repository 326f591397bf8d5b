"""Max-pooling with a cheap gradient, and batch norm followed by max-pooling as one op.

Both route a window's gradient to its first maximum in row-major order, as nn.max_pool and torch
do. The forward passes are XLA reduce-windows; the backward passes compare each of the window's
strided views with the pooled value and interleave the views back to full resolution.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models.conv import window_views


def _pool_views(x, window: int):
  """The window^nd strided views of x, one per offset inside the window (row-major), each of the
  pooled output's shape; a ragged edge is dropped."""
  nd = x.ndim - 2
  sizes = [n // window for n in x.shape[1:-1]]
  return [view for _, view in window_views(x, (window,) * nd, sizes, (window,) * nd)]


def _interleave(parts, window: int):
  """The inverse of `_pool_views`: window^nd arrays [B, *sizes, C] (row-major offsets) -> one
  [B, *sizes * window, C]."""
  nd = parts[0].ndim - 2
  b, *sizes, c = parts[0].shape
  # [B, *sizes, window^nd, C] -> [B, n0, w, n1, w, ..., C] -> [B, *sizes * window, C]
  x = jnp.stack(parts, axis=-2).reshape(b, *sizes, *(window,) * nd, c)
  perm = [0] + [p for i in range(nd) for p in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
  return x.transpose(perm).reshape(b, *[n * window for n in sizes], c)


def _first_hits(x, y, window: int):
  """Per window view of x, where it holds the window's value y for the first time (row-major)."""
  taken, hits = None, []
  for view in _pool_views(x, window):
    hit = view == y if taken is None else (view == y) & ~taken
    taken = hit if taken is None else taken | hit
    hits.append((view, hit))
  return hits


def _pool(x, window: int):
  # VALID with the stride equal to the window drops a ragged edge.
  dims = (1,) + (window,) * (x.ndim - 2) + (1,)
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, dims, dims, "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, window: int = 2):
  """Non-overlapping max-pool (VALID: a ragged edge is dropped), the same values and gradient
  as flax's nn.max_pool: the gradient goes to the first maximum of each window in row-major
  order, as in torch. The backward pass is a chain of compares and selects, because XLA's CPU
  backend runs nn.max_pool's select-and-scatter gradient far slower (8 x 128^2 x 16, forward +
  backward: 25.8 against 1.2 ms, 2026-11-26), and autodiff through a reshape + max adds a tie
  count and a division (BUILD.md performance notes). The forward pass is XLA's reduce-window,
  which XLA computes once and keeps: written as an element-wise max of strided views, it was
  fused, with the batch norm before it, into each of its consumers, among them the batch-minor
  copy XLA's CPU backend makes for the next convolution's weight gradient (14-15 ms of UNeXt's
  256 px step for one 8 MB copy, 2026-11-26)."""
  return _pool(x, window)


def _max_pool_fwd(x, window):
  y = _pool(x, window)
  return y, (x, y)


def _max_pool_bwd(window, residuals, g):
  x, y = residuals
  dx = _interleave([jnp.where(hit, g, jnp.zeros_like(g)) for _, hit in _first_hits(x, y, window)],
                   window)
  ragged = [(0, full - n) for full, n in zip(x.shape[1:-1], dx.shape[1:-1], strict=True)]
  return (jnp.pad(dx, [(0, 0)] + ragged + [(0, 0)]),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _batch_stats(x):
  """nn.BatchNorm's training statistics over all but the channel axis, in float32: the mean and
  the (biased) variance as E[x^2] - E[x]^2, clipped at 0."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = x.mean(axes)
  return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


def _batch_norm_max_pool_fwd(z, scale, bias, epsilon, window):
  mean, var = _batch_stats(z)
  rstd = lax.rsqrt(var + epsilon)
  mul = rstd * scale
  # Per channel the normalisation is monotone: increasing where mul >= 0, decreasing elsewhere.
  # So the window's largest output is the map of the window's largest z, or of its smallest:
  # pooling z with its sign flipped on the decreasing channels (exact) finds either in one pass,
  # and the normalised full-resolution tensor is never written.
  sign = jnp.where(mul >= 0, 1, -1).astype(z.dtype)
  picked = sign * _pool(z * sign, window)
  out = ((picked - mean) * mul + bias).astype(z.dtype)
  return (out, mean, var), (z, picked, mean, rstd, mul)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_max_pool(z, scale, bias, epsilon: float, window: int):
  """max_pool(nn.BatchNorm in training mode (z)) and the batch's mean and variance (float32, per
  channel; for the running averages). Channels last; z's dtype in and out, statistics and
  arithmetic in float32 as nn.BatchNorm computes them.

  XLA, given batch norm and max-pool as separate ops, wrote the normalised tensor and two
  intermediates at full resolution for the backward pass, and ran the batch norm's backward over
  the max-pool's scattered gradient in several full-resolution passes. Here the forward pass reads
  z twice (statistics, pooling) and writes only the pooled output; the backward pass is one
  full-resolution pass, its sums over the pooled gradient taken at pooled resolution (the
  scattered gradient is zero elsewhere). UNeXt 256 px, batch 8, 2-core CPU: BUILD.md
  performance notes."""
  return _batch_norm_max_pool_fwd(z, scale, bias, epsilon, window)[0]


def _batch_norm_max_pool_bwd(epsilon, window, residuals, cotangents):
  z, picked, mean, rstd, mul = residuals
  g, g_mean, g_var = (c.astype(jnp.float32) for c in cotangents)
  n = z.size // z.shape[-1]
  axes = tuple(range(z.ndim - 1))
  d_bias = g.sum(axes)
  d_scale = (g * ((picked - mean) * rstd)).sum(axes)
  # nn.BatchNorm's input gradient for an output gradient dy that is g at each window's first
  # maximum and 0 elsewhere: mul * (dy - mean(dy) - xhat * mean(dy * xhat)), plus the paths
  # through the returned mean and variance; all but the first term is affine in z per channel.
  slope = -mul * rstd * d_scale / n + 2 * g_var / n
  const = -mul * d_bias / n - slope * mean + g_mean / n
  dz = _interleave([jnp.where(hit, mul * g, 0.0) + (const + slope * view)
                    for view, hit in _first_hits(z, picked, window)], window)
  if dz.shape != z.shape:  # a ragged edge: only the statistics reach it
    dz = lax.dynamic_update_slice(const + slope * z.astype(jnp.float32), dz, (0,) * z.ndim)
  return dz.astype(z.dtype), d_scale, d_bias


batch_norm_max_pool.defvjp(_batch_norm_max_pool_fwd, _batch_norm_max_pool_bwd)


class BatchNormMaxPool(nn.Module):
  """max_pool(nn.BatchNorm(x + offset)) with nn.BatchNorm's variables (params scale and bias,
  batch_stats mean and var; same shapes, initial values and updates, momentum as in flax), so
  that, named where that nn.BatchNorm was, it reads and writes the same checkpoints.

  `offset`, a per-channel vector, is the bias of the convolution before it, passed separately
  because batch statistics cancel it in training mode: it is added only where it has an effect,
  to the running mean and in evaluation. It saves a full-resolution addition forward and a
  full-resolution sum for its gradient, which is zero (as it is analytically in PyTorch, where
  float rounding leaves a tiny one)."""

  momentum: float = 0.9
  epsilon: float = 1e-5
  window: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, offset=None):
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x = x.astype(self.dtype)
    offset = jnp.zeros((c,), jnp.float32) if offset is None else offset.astype(jnp.float32)
    if not train:
      y = (x + offset.astype(self.dtype) - ra_mean.value) * (
          lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return max_pool(y.astype(self.dtype), self.window)
    out, mean, var = batch_norm_max_pool(x, scale, bias, self.epsilon, self.window)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * (mean + offset)
      ra_var.value = m * ra_var.value + (1 - m) * var
    return out
