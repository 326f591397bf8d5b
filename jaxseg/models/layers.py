"""Building blocks shared by the networks: N-D (2-D NHWC or 3-D NDHWC), compute dtype from
config, float32 parameters. Kernel sizes follow the input's rank, so one block serves 2-D and
3-D networks."""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.conv import Conv

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
  conv_impl: str = "xla"  # or "patches": im2col weight gradient (jaxseg.models.conv), for CPUs

  @nn.compact
  def __call__(self, x, train: bool):
    nd = spatial_dims(x)
    if self.conv_impl == "xla":
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


def max_pool(x, window: int = 2):
  nd = spatial_dims(x)
  return nn.max_pool(x, (window,) * nd, strides=(window,) * nd)


def up_conv(features: int, x, dtype, name=None):
  """2x (2x2x2) transposed convolution: doubles every spatial size."""
  nd = spatial_dims(x)
  return nn.ConvTranspose(features, (2,) * nd, strides=(2,) * nd, dtype=dtype, name=name)(x)


def head(features: int, x, dtype, name="head"):
  """1x1 conv to logits, returned in float32 whatever the compute dtype."""
  nd = spatial_dims(x)
  return nn.Conv(features, (1,) * nd, dtype=dtype, name=name)(x).astype(jnp.float32)
