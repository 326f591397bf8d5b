"""Building blocks shared by the networks: N-D (2-D NHWC or 3-D NDHWC), compute dtype from
config, float32 parameters. Kernel sizes follow the input's rank, so one block serves 2-D and
3-D networks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv, pointwise_conv, window_views

NORMS = ("batch", "group", "instance", "none")


def spatial_dims(x) -> int:
  return x.ndim - 2


class Norm(nn.Module):
  """BatchNorm (PyTorch momentum 0.1 = Flax 0.9), GroupNorm (8 groups), InstanceNorm, or none.

  Group and instance norm suit 3-D nets whose per-device batch is one or two volumes.
  """

  kind: str = "batch"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.kind == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          dtype=self.dtype)(x)
    if self.kind == "group":
      return nn.GroupNorm(num_groups=min(8, x.shape[-1]), epsilon=1e-5, dtype=self.dtype)(x)
    if self.kind == "instance":
      return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype)(x)
    if self.kind == "none":
      return x
    raise ValueError(f"model.norm={self.kind!r}; known: {NORMS}")


class ConvNormAct(nn.Module):
  """Conv -> norm -> ReLU -> (channel dropout). The conv has a bias only without a norm."""

  features: int
  kernel: int = 3
  strides: int = 1
  norm: str = "batch"
  dropout: float = 0.0
  act: bool = True
  dtype: jnp.dtype = jnp.float32
  # "xla", or "patches": im2col weight gradient (jaxseg.models.conv). 3-D convolutions always go
  # through jaxseg.models.conv.Conv, which runs them on CPUs as sums of 2-D convolutions.
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x, train: bool):
    nd = spatial_dims(x)
    if self.conv_impl == "xla" and nd == 2:
      x = nn.Conv(self.features, (self.kernel,) * nd, strides=(self.strides,) * nd,
                  padding="SAME", use_bias=self.norm == "none", dtype=self.dtype,
                  name="Conv_0")(x)
    else:
      x = Conv(self.features, self.kernel, self.strides, use_bias=self.norm == "none",
               dtype=self.dtype, impl=self.conv_impl, name="Conv_0")(x)
    x = Norm(self.norm, self.dtype)(x, train)
    if self.act:
      x = nn.relu(x)
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
  conv_impl: str = "xla"

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
                      name="shortcut")(x, train)
    return y + x


def _pool_views(x, window: int):
  """The window^nd strided views of x, one per offset inside the window (row-major), each of the
  pooled output's shape; a ragged edge is dropped."""
  nd = spatial_dims(x)
  sizes = [n // window for n in x.shape[1:-1]]
  return [view for _, view in window_views(x, (window,) * nd, sizes, (window,) * nd)]


def _pool(x, window: int):
  # VALID with the stride equal to the window drops a ragged edge.
  dims = (1,) + (window,) * spatial_dims(x) + (1,)
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, dims, dims, "VALID")


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
  nd = spatial_dims(x)
  sizes = y.shape[1:-1]
  taken, parts = None, []
  for view in _pool_views(x, window):
    hit = view == y if taken is None else (view == y) & ~taken
    taken = hit if taken is None else taken | hit
    parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
  # [B, *sizes, window^nd, C] -> [B, n0, w, n1, w, ..., C] -> [B, *sizes * window, C]
  dx = jnp.stack(parts, axis=-2).reshape(x.shape[0], *sizes, *(window,) * nd, x.shape[-1])
  perm = [0] + [p for i in range(nd) for p in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
  dx = dx.transpose(perm).reshape(x.shape[0], *[n * window for n in sizes], x.shape[-1])
  ragged = [(0, 0)] + [(0, full - n * window) for full, n in zip(x.shape[1:-1], sizes, strict=True)]
  return (jnp.pad(dx, ragged + [(0, 0)]),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


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
    return y + bias.astype(self.dtype)


def up_conv(features: int, x, dtype, name=None):
  """2x (2x2x2) transposed convolution: doubles every spatial size."""
  return UpConv(features, dtype, name=name)(x)


def upsample2_bilinear(x):
  """2x bilinear (trilinear in 3-D) up-sampling with half-pixel centres and clamped edges: the
  values of jax.image.resize(x, 2x, "bilinear") and torch's align_corners=False. Written as its
  fixed stencil, one axis at a time: output 2i is 3/4 x[i] + 1/4 x[i-1], output 2i+1 is
  3/4 x[i] + 1/4 x[i+1], interleaved by a stack and a reshape. jax.image.resize computes it as
  a matmul per axis with transposes around each, which cost XLA's CPU backend 2-4x this stencil
  forward + backward (8 x 128^2 x 16: 15 + 21 against 4 + 8 ms, 2026-11-26)."""
  for axis in range(1, x.ndim - 1):
    n = x.shape[axis]
    first, last = (jax.lax.slice_in_dim(x, i, i + 1, axis=axis) for i in (0, n - 1))
    before = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    after = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), last], axis)
    near = 0.75 * x
    pair = jnp.stack([near + 0.25 * before, near + 0.25 * after], axis + 1)
    x = pair.reshape(*x.shape[:axis], 2 * n, *x.shape[axis + 1:])
  return x


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
    return y + bias.astype(self.dtype)


def head(features: int, x, dtype, name="head"):
  """1x1 conv to logits, returned in float32 whatever the compute dtype."""
  return Head(features, dtype, name=name)(x).astype(jnp.float32)
