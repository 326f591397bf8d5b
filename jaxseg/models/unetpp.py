"""UNet++ (Zhou et al. 2018) over an ImageNet encoder: the GI-tract transfer model (mission B).

Nested dense skips: node X[i][j] (level i, 1/2^(i+1) resolution; column j) sees every earlier
node of its level and the 2x-upsampled node X[i+1][j-1] below, through one DoubleConv. X[i][0]
are the encoder's features; the output climbs from X[0][last] (1/2) to full size through one
more DoubleConv. Widths per level are 2f, 4f, 8f, 16f and f at full size (f = 16 gives
segmentation_models' 32...256 and 16). Upsampling is nearest-neighbour, as there.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.encoders import encode
from jaxseg.models.layers import DoubleConv, head


def upsample2x(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNetPlusPlus(nn.Module):
  encoder: str = "efficientnet_b3"
  out_channels: int = 1
  features: int = 16
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl, encoder and decoder

  @nn.compact
  def __call__(self, x, train: bool = False):
    size = x.shape[1]
    feats = encode(self.encoder, x, self.dtype, train, self.conv_impl)
    # One encoder map per level, 1/2 ... 1/32: the last map at each resolution.
    levels = [[{f.shape[1]: f for f in feats}[size // 2 ** (i + 1)]] for i in range(5)]
    for j in range(1, 5):
      for i in range(5 - j):
        width = self.features * 2 ** (i + 1)
        inputs = levels[i] + [upsample2x(levels[i + 1][j - 1])]
        levels[i].append(DoubleConv(width, self.norm, dtype=self.dtype, conv_impl=self.conv_impl,
                                    name=f"x_{i}_{j}")(jnp.concatenate(inputs, axis=-1), train))
    y = DoubleConv(self.features, self.norm, dtype=self.dtype, conv_impl=self.conv_impl,
                   name="final")(
        upsample2x(levels[0][-1]), train)
    return head(self.out_channels, y, self.dtype)
