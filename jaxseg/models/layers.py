"""Building blocks shared by the networks: NHWC, compute dtype from config, float32 params."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvNormAct(nn.Module):
  """Conv -> (BatchNorm) -> ReLU -> (Dropout). The conv has a bias only without a norm."""

  features: int
  kernel: Sequence[int] = (3, 3)
  batch_norm: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, self.kernel, padding="SAME", use_bias=not self.batch_norm,
                dtype=self.dtype)(x)
    if self.batch_norm:
      # momentum 0.9 is PyTorch's 0.1; statistics are reduced in float32.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)(x)
    x = nn.relu(x)
    if self.dropout:
      # Channel dropout (Dropout2d): one draw per feature map.
      x = nn.Dropout(self.dropout, broadcast_dims=tuple(range(1, x.ndim - 1)),
                     deterministic=not train)(x)
    return x


class DoubleConv(nn.Module):
  """Two ConvNormAct layers: the unit of every UNet level."""

  features: int
  batch_norm: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(2):
      x = ConvNormAct(self.features, batch_norm=self.batch_norm, dropout=self.dropout,
                      dtype=self.dtype)(x, train)
    return x


def max_pool(x, window: int = 2):
  nd = x.ndim - 2
  return nn.max_pool(x, (window,) * nd, strides=(window,) * nd)
