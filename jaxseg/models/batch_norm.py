"""Batch norm in training mode as one op with what follows it: an activation, ReLU or SiLU
(`batch_norm_act`), or a 2x max-pool (`batch_norm_max_pool`), each with a hand-written
gradient; and `BatchNorm`, the module with nn.BatchNorm's variables that runs them.

Given nn.BatchNorm and the op after it separately, XLA keeps intermediates at full resolution
for the backward pass (the centred input, the activation's input or mask, the normalised
tensor) and runs the backward pass in several full-resolution passes. Here each forward pass
reads its input twice (the statistics, then the output) and writes only the output; each
backward pass recomputes what it needs from the saved input (see each op for its passes).

On CPUs, float32 and bfloat16 batch norms take their full-resolution sums (float32) from
models/native_sums.py, each one pass over its inputs, where that library builds (else XLA's
reductions; both under a sharded batch: the devices' partial sums are added).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models import native_sums
from jaxseg.models.native_sums import ACTIVATIONS
from jaxseg.models.pooling import _first_hits, _interleave, _pool, max_pool


def batch_stats(x):
  """nn.BatchNorm's training statistics over all but the channel axis, in float32: the mean and
  the (biased) variance as E[x^2] - E[x]^2, clipped at 0. XLA's reductions, differentiable."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean = x.mean(axes)
  return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


def _forward_stats(x):
  """batch_stats for the ops' forward passes (never differentiated: their gradients are
  hand-written), from the native sums where they run."""
  if not native_sums.applies(x):
    return batch_stats(x)
  n = x.size // x.shape[-1]
  total, total_sq = native_sums.stats(x)
  mean = total / n
  return mean, jnp.maximum(0.0, total_sq / n - mean * mean)


def _statistics_gradient(z, mean, g_mean, g_var):
  """The input gradient through the returned mean and variance (for a caller that
  differentiates them; the module only feeds them to the running averages)."""
  n = z.size // z.shape[-1]
  return g_mean / n + (2 / n) * g_var * (z.astype(jnp.float32) - mean)


def activation(y, act):
  """act(y) for act in ACTIVATIONS."""
  if act == "relu":
    return jnp.maximum(y, 0.0)
  if act == "silu":
    return y * jax.nn.sigmoid(y)
  if act is None:
    return y
  raise ValueError(f"batch norm activation {act!r}; known: {ACTIVATIONS}")


def _activation_gradient(y, g, act):
  """g times the activation's derivative at y (the ReLU's is 0 at 0, as jax.nn.relu's)."""
  if act == "relu":
    return jnp.where(y > 0, g, 0.0)
  if act == "silu":
    s = jax.nn.sigmoid(y)
    return g * (s * (1 + y * (1 - s)))
  return g


def _batch_norm_act_fwd(z, scale, bias, epsilon, act):
  mean, var = _forward_stats(z)
  rstd = lax.rsqrt(var + epsilon)
  y = activation((z.astype(jnp.float32) - mean) * (rstd * scale) + bias, act)
  return (y.astype(z.dtype), mean, var), (z, mean, rstd, scale, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_act(z, scale, bias, epsilon: float, act: str | None = None):
  """act(nn.BatchNorm in training mode (z)), act one of ACTIVATIONS (None: the batch norm
  alone), and the batch's mean and variance (float32, per channel; for the running averages).
  Channels last; z's dtype in and out, statistics and arithmetic in float32 as nn.BatchNorm
  computes them. The backward pass recomputes the normalised input and the activation's input
  from z instead of keeping them."""
  return _batch_norm_act_fwd(z, scale, bias, epsilon, act)[0]


def _batch_norm_act_fwd_rule(z, scale, bias, epsilon, act):
  # symbolic_zeros: the differentiable arguments come wrapped (value, perturbed).
  return _batch_norm_act_fwd(z.value, scale.value, bias.value, epsilon, act)


def _batch_norm_act_bwd(epsilon, act, residuals, cotangents):
  z, mean, rstd, scale, bias = residuals
  g, g_mean, g_var = cotangents
  g = _instantiate(g)
  z32 = z.astype(jnp.float32)
  mul = rstd * scale
  dy = _activation_gradient((z32 - mean) * mul + bias, g.astype(jnp.float32), act)
  if native_sums.applies(z):  # g has z's dtype
    # Both sums in one pass over z and g; sum(dy * xhat) = rstd * sum(dy * (z - mean)).
    d_bias, centred = native_sums.gradient_sums(z, g, mean, mul, bias, act)
    d_scale = rstd * centred
  else:
    axes = tuple(range(z.ndim - 1))
    # The sums of dy and dy * z, not of dy * xhat: XLA's CPU backend hands a sum of a product
    # to its reduction library but wrote xhat = (z - mean) * rstd out at full resolution
    # first. sum(dy * xhat) = rstd * (sum(dy * z) - mean * sum(dy)). Two reductions, not one
    # variadic one: the variadic one ran 4-6x slower there (8 x 128^2 x 32, 2026-11-26).
    d_bias = dy.sum(axes)
    d_scale = rstd * ((dy * z32).sum(axes) - mean * d_bias)
  n = z.size // z.shape[-1]
  # nn.BatchNorm's input gradient, mul * (dy - mean(dy) - xhat * mean(dy * xhat)): per channel
  # mul * dy plus an affine function of z.
  slope = mul * rstd * d_scale / n
  dz = mul * dy - slope * z32 + (slope * mean - mul * d_bias / n)
  if not (_is_zero(g_mean) and _is_zero(g_var)):
    dz = dz + _statistics_gradient(z, mean, _instantiate(g_mean), _instantiate(g_var))
  return dz.astype(z.dtype), d_scale, d_bias


def _is_zero(cotangent):
  return isinstance(cotangent, jax.custom_derivatives.SymbolicZero)


def _instantiate(cotangent):
  if _is_zero(cotangent):
    return jnp.zeros(cotangent.shape, cotangent.dtype)
  return cotangent


# Symbolic zeros: the statistics usually feed only the running averages, whose cotangents are
# then known zeros, and their input-gradient term (a full-resolution pass) is left out.
batch_norm_act.defvjp(_batch_norm_act_fwd_rule, _batch_norm_act_bwd, symbolic_zeros=True)


def _batch_norm_max_pool_fwd(z, scale, bias, epsilon, window):
  mean, var = _forward_stats(z)
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



class BatchNorm(nn.Module):
  """nn.BatchNorm(x + offset), followed by an activation (`act`: "relu", "silu") or a 2x
  max-pool (`then_max_pool`),
  with nn.BatchNorm's variables (params scale and bias, batch_stats mean and var; same shapes,
  initial values and updates, momentum as in flax), so that, named where that nn.BatchNorm was,
  it reads and writes the same checkpoints.

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
  def __call__(self, x, train: bool, offset=None, act: str | None = None,
               then_max_pool: bool = False):
    if act and then_max_pool:
      # max-pool and a ReLU commute: the caller applies it to the 4x smaller pooled output.
      raise ValueError(f"BatchNorm: act={act!r} with then_max_pool; apply it after the pool")
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
      y = y.astype(self.dtype)
      if then_max_pool:
        return max_pool(y, self.window)
      return activation(y, act).astype(self.dtype)
    if then_max_pool:
      out, mean, var = batch_norm_max_pool(x, scale, bias, self.epsilon, self.window)
    else:
      out, mean, var = batch_norm_act(x, scale, bias, self.epsilon, act)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * (mean + offset)
      ra_var.value = m * ra_var.value + (1 - m) * var
    return out
