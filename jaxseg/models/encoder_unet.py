"""UNet decoder over an ImageNet encoder (VGG16, ResNet50): the LGG encoder study (mission A).

The decoder climbs from the encoder's 1/32 bottom in five 2x steps; each step is a transposed
conv, concatenation with the encoder feature of that resolution when there is one, and a
DoubleConv. Widths are 16f, 8f, 4f, 2f, f (f = 16 gives segmentation_models' 256...16).
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.encoders import encode
from jaxseg.models.layers import DoubleConv, head, up_conv


class EncoderUNet(nn.Module):
  encoder: str = "resnet50"
  out_channels: int = 1
  features: int = 16
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl, encoder and decoder

  @nn.compact
  def __call__(self, x, train: bool = False):
    *skips, x = encode(self.encoder, x, self.dtype, train, self.conv_impl)
    by_size = {s.shape[1]: s for s in skips}
    for i in range(5):
      f = self.features * 2 ** (4 - i)
      x = up_conv(f, x, self.dtype, name=f"up_{i}")
      if x.shape[1] in by_size:
        x = jnp.concatenate([x, by_size[x.shape[1]]], axis=-1)
      x = DoubleConv(f, self.norm, dtype=self.dtype, conv_impl=self.conv_impl,
                     name=f"dec_{i}")(x, train)
    return head(self.out_channels, x, self.dtype)
