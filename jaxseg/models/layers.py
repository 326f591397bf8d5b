"""Building blocks shared by the networks: N-D (2-D NHWC or 3-D NDHWC), compute dtype from
config, float32 parameters. Kernel sizes follow the input's rank, so one block serves 2-D and
3-D networks."""

import functools
import math
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models.batch_norm import BatchNorm, activation
from jaxseg.models.conv import Conv, add_bias, pointwise_conv, window_views
from jaxseg.models.pooling import max_pool

NORMS = ("batch", "group", "instance", "none")
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # PyTorch's BatchNorm defaults (its momentum 0.1)


def spatial_dims(x) -> int:
  return x.ndim - 2


class Norm(nn.Module):
  """BatchNorm (PyTorch momentum 0.1 = Flax 0.9), GroupNorm (8 groups), InstanceNorm, or none.

  Group and instance norm suit 3-D nets whose per-device batch is one or two volumes.
  """

  kind: str = "batch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, offset=None, then_max_pool: bool = False,
               act: str | None = None):
    """norm(x + offset), then max_pool (2x2 windows) with `then_max_pool` or an activation
    (`act`: "relu", "silu"; not both). `offset` is the bias of the convolution before it, left
    out of that convolution so that a batch norm can drop it where it cancels. Batch norm runs
    as one op with the pool or the activation (jaxseg.models.batch_norm.BatchNorm, under
    nn.BatchNorm's name)."""
    if self.kind == "batch":
      return BatchNorm(BN_MOMENTUM, BN_EPSILON, dtype=self.dtype, name="BatchNorm_0")(
          x, train, offset, act=act, then_max_pool=then_max_pool)
    if act and then_max_pool:
      raise ValueError(f"Norm: act={act!r} with then_max_pool; apply it after the pool")
    if offset is not None:
      x = add_bias(x, offset)
    if self.kind == "group":
      x = nn.GroupNorm(num_groups=min(8, x.shape[-1]), epsilon=1e-5, dtype=self.dtype)(x)
    elif self.kind == "instance":
      x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype)(x)
    elif self.kind != "none":
      raise ValueError(f"model.norm={self.kind!r}; known: {NORMS}")
    return max_pool(x) if then_max_pool else activation(x, act)


class ConvNormAct(nn.Module):
  """Conv -> norm -> ReLU -> (channel dropout). The conv has a bias only without a norm."""

  features: int
  kernel: int = 3
  strides: int = 1
  norm: str = "batch"
  dropout: float = 0.0
  act: bool = True
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl

  @nn.compact
  def __call__(self, x, train: bool):
    x = Conv(self.features, self.kernel, self.strides, use_bias=self.norm == "none",
             dtype=self.dtype, impl=self.conv_impl, name="Conv_0")(x)
    x = Norm(self.norm, self.dtype)(x, train, act="relu" if self.act else None)
    if self.dropout:
      # Channel dropout (Dropout2d / Dropout3d): one draw per feature map.
      x = nn.Dropout(self.dropout, broadcast_dims=tuple(range(1, x.ndim - 1)),
                     deterministic=not train)(x)
    return x


class DoubleConv(nn.Module):
  """Two ConvNormAct layers: the unit of every UNet level. With `residual`, the input (through
  a 1x1 conv + norm when the width changes) is added to the output."""

  features: int
  norm: str = "batch"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  residual: bool = False
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    y = x
    for _ in range(2):
      y = ConvNormAct(self.features, norm=self.norm, dropout=self.dropout,
                      dtype=self.dtype, conv_impl=self.conv_impl)(y, train)
    if not self.residual:
      return y
    if x.shape[-1] != self.features:
      x = ConvNormAct(self.features, kernel=1, norm=self.norm, act=False, dtype=self.dtype,
                      conv_impl=self.conv_impl, name="shortcut")(x, train)
    return y + x


class Dense(nn.Module):
  """nn.Dense(features, dtype=dtype) on the last axis, with its parameters (names, shapes,
  initialisers), whose bias gradient is conv.add_bias's."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return add_bias(x.astype(self.dtype) @ kernel.astype(self.dtype), bias)


class UpConv(nn.Module):
  """2x2 (2x2x2) stride-2 transposed convolution, written as what it is: one matmul per input
  pixel into its 2x2 output block, then a depth-to-space reshape. Same parameters (names,
  shapes, initialiser) and outputs as flax's nn.ConvTranspose(features, 2, strides=2), which
  XLA lowers to a dilated convolution whose gradient is slow on CPUs: 150-167 ms per layer
  against 3-5 ms as a matmul (8 x 64^2 x 64 -> 32, 2-core CPU, 2026-11-25)."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    nd = spatial_dims(x)
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (2,) * nd + (cin, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    # nn.ConvTranspose (transpose_kernel=False) applies the kernel flipped in space.
    kernel = kernel[(slice(None, None, -1),) * nd].astype(self.dtype)
    kmat = jnp.moveaxis(kernel, nd, 0).reshape(cin, -1)  # [cin, (2,)*nd x out]
    x = x.astype(self.dtype)
    y = (x.reshape(-1, cin) @ kmat).reshape(*x.shape[:-1], *(2,) * nd, self.features)
    # [B, *S, *(2,), F] -> [B, S0, 2, S1, 2, ..., F] -> [B, *2S, F]
    perm = [0] + [p for i in range(nd) for p in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    y = y.transpose(perm).reshape(x.shape[0], *[2 * n for n in x.shape[1:-1]], self.features)
    return add_bias(y, bias)


def up_conv(features: int, x, dtype, name=None):
  """2x (2x2x2) transposed convolution: doubles every spatial size."""
  return UpConv(features, dtype, name=name)(x)


_NEAR, _FAR = 0.75, 0.25  # bilinear 2x weights of the nearer and the farther input pixel


def _edge_padded(x):
  """One more pixel on each side of each spatial axis, repeating the edge: the clamp."""
  return jnp.pad(x, [(0, 0)] + [(1, 1)] * spatial_dims(x) + [(0, 0)], mode="edge")


def _upsample2(x):
  for axis in range(1, x.ndim - 1):
    # Output 2i is 3/4 x[i] + 1/4 x[i-1], output 2i+1 is 3/4 x[i] + 1/4 x[i+1] (edges clamped).
    n = x.shape[axis]
    first, last = (lax.slice_in_dim(x, i, i + 1, axis=axis) for i in (0, n - 1))
    before = jnp.concatenate([first, lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    after = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
    near = _NEAR * x
    pair = jnp.stack([near + _FAR * before, near + _FAR * after], axis + 1)
    x = pair.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1:])
  return x


@jax.custom_vjp
def upsample2_bilinear(x):
  """2x bilinear (trilinear in 3-D) up-sampling with half-pixel centres and clamped edges: the
  values of jax.image.resize(x, 2x, "bilinear") and torch's align_corners=False. Written as its
  fixed stencil, one axis at a time, each output pair interleaved by a stack and a reshape
  (jax.image.resize computes it as a matmul per axis with transposes around each, which cost
  XLA's CPU backend 2-4x this stencil forward + backward: 8 x 128^2 x 16, 15 + 21 against 4 + 8
  ms, 2026-11-26). The gradient is the transposed stencil in one pass: a weighted sum of the
  4^nd stride-2 views of the edge-padded output gradient (the padding returns the clamped taps'
  share to the edge input). JAX's derivative of the per-axis stencil wrote four zero-padded
  partial gradients per axis at full size and then summed them (UNeXt 256 px: BUILD.md
  performance notes)."""
  return _upsample2(x)


def _upsample2_fwd(x):
  return _upsample2(x), None


def _upsample2_bwd(_, g):
  nd = spatial_dims(g)
  sizes = [n // 2 for n in g.shape[1:-1]]
  # Input i receives outputs 2i-1 .. 2i+2 with weights 1/4, 3/4, 3/4, 1/4 along each axis.
  weights = (_FAR, _NEAR, _NEAR, _FAR)
  taps = window_views(_edge_padded(g), (4,) * nd, sizes, (2,) * nd)
  return (functools.reduce(operator.add,
                           [math.prod(weights[o] for o in offset) * view for offset, view in taps]),)


upsample2_bilinear.defvjp(_upsample2_fwd, _upsample2_bwd)


class Head(nn.Module):
  """1x1 (1x1x1) convolution to logits: nn.Conv's parameters (names, shapes, initialisers), so
  checkpoints do not depend on it, computed by conv.pointwise_conv."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    nd = spatial_dims(x)
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1,) * nd + (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype))
    return add_bias(y, bias)


def head(features: int, x, dtype, name="head"):
  """1x1 conv to logits, returned in float32 whatever the compute dtype."""
  return Head(features, dtype, name=name)(x).astype(jnp.float32)
