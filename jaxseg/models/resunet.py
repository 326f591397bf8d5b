"""ResUNet (Zhang, Liu & Wang 2018, "Road extraction by deep residual U-Net"), 2-D or 3-D.

Encoder: a stem (conv-norm-ReLU-conv) and `depth - 1` pre-activation residual blocks
(norm-ReLU-conv x2, the first conv strided) each with a 1x1-conv + norm shortcut; a strided
residual bridge; decoder: 2x transposed conv, skip concatenation, residual block; 1x1 head.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.conv import Conv
from jaxseg.models.layers import Norm, head, up_conv


class ResBlock(nn.Module):
  features: int
  strides: int = 1
  norm: str = "batch"
  stem: bool = False  # the first block: no norm-ReLU before its first conv
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda f, k, s: Conv(f, k, s, use_bias=self.norm == "none", dtype=self.dtype,  # noqa: E731
                                impl=self.conv_impl)
    y = x if self.stem else Norm(self.norm, self.dtype)(x, train, act="relu")
    y = conv(self.features, 3, self.strides)(y)
    y = Norm(self.norm, self.dtype)(y, train, act="relu")
    y = conv(self.features, 3, 1)(y)
    shortcut = Norm(self.norm, self.dtype)(conv(self.features, 1, self.strides)(x), train)
    return y + shortcut


class ResUNet(nn.Module):
  out_channels: int = 1
  features: int = 64
  depth: int = 3  # resolution levels before the bridge (64, 128, 256 -> bridge 512)
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    block = lambda f, s, name, stem=False: ResBlock(f, s, self.norm, stem, self.dtype,  # noqa: E731
                                                    self.conv_impl, name=name)
    skips = []
    for level in range(self.depth):
      x = block(self.features * 2**level, 1 if level == 0 else 2, f"enc_{level}",
                stem=level == 0)(x, train)
      skips.append(x)
    x = block(self.features * 2**self.depth, 2, "bridge")(x, train)
    for level in reversed(range(self.depth)):
      f = self.features * 2**level
      x = up_conv(f, x, self.dtype, name=f"up_{level}")
      x = block(f, 1, f"dec_{level}")(jnp.concatenate([x, skips[level]], -1), train)
    return head(self.out_channels, x, self.dtype)
