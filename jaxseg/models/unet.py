"""The classic UNet (Ronneberger et al.; the variant Buda et al. trained on LGG), 2-D or 3-D.

`depth` levels of DoubleConv + 2x max-pool, a bottleneck DoubleConv, then per level a 2x
transposed conv, concatenation with the skip, and a DoubleConv; a 1x1 conv gives the logits.
With 32 base features, depth 4, 3 input and 1 output channels (2-D) it has 7,763,041 parameters,
Buda et al.'s count. The same module on [B, D, H, W, C] input is the 3-D UNet (3x3x3 convs).
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.layers import DoubleConv, head, up_conv
from jaxseg.models.pooling import max_pool


class UNet(nn.Module):
  out_channels: int = 1
  features: int = 32
  depth: int = 4
  norm: str = "batch"
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  residual: bool = False  # residual DoubleConv blocks (the GI-tract scratch CNN)
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = nn.remat(DoubleConv, static_argnums=(2,)) if self.remat else DoubleConv
    # Explicit names: parameter paths (and so checkpoints and the init RNG) do not change when
    # remat is switched on or off.
    block = lambda f, name: conv(f, self.norm, self.dropout, self.dtype, self.residual,  # noqa: E731
                                 self.conv_impl, name=name)
    if any(n % 2**self.depth for n in x.shape[1:-1]):
      raise ValueError(f"UNet with depth {self.depth} needs every input side divisible by "
                       f"{2**self.depth}, got {x.shape[1:-1]}")
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = block(self.features * 2**level, f"enc_{level}")(x, train)
      skips.append(x)
      x = max_pool(x)
    x = block(self.features * 2**self.depth, "bottleneck")(x, train)
    for level in reversed(range(self.depth)):
      f = self.features * 2**level
      x = up_conv(f, x, self.dtype, name=f"up_{level}")
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = block(f, f"dec_{level}")(x, train)
    return head(self.out_channels, x, self.dtype)
