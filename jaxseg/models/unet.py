"""The classic UNet (Ronneberger et al.; the variant Buda et al. trained on LGG).

`depth` levels of DoubleConv + 2x2 max-pool, a bottleneck DoubleConv, then per level a 2x2
transposed conv, concatenation with the skip, and a DoubleConv; a 1x1 conv gives the logits.
With 32 base features, depth 4, 3 input and 1 output channels it has 7,763,041 parameters,
Buda et al.'s count.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.layers import DoubleConv, max_pool


class UNet(nn.Module):
  out_channels: int = 1
  features: int = 32
  depth: int = 4
  batch_norm: bool = True
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = nn.remat(DoubleConv, static_argnums=(2,)) if self.remat else DoubleConv
    # Explicit names: parameter paths (and so checkpoints and the init RNG) do not change when
    # remat is switched on or off.
    block = lambda f, name: conv(f, self.batch_norm, self.dropout, self.dtype, name=name)  # noqa: E731
    x = x.astype(self.dtype)
    skips = []
    for level in range(self.depth):
      x = block(self.features * 2**level, f"enc_{level}")(x, train)
      skips.append(x)
      x = max_pool(x)
    x = block(self.features * 2**self.depth, "bottleneck")(x, train)
    for level in reversed(range(self.depth)):
      f = self.features * 2**level
      x = nn.ConvTranspose(f, (2, 2), strides=(2, 2), dtype=self.dtype, name=f"up_{level}")(x)
      x = jnp.concatenate([x, skips[level]], axis=-1)
      x = block(f, f"dec_{level}")(x, train)
    logits = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="head")(x)
    return logits.astype(jnp.float32)
