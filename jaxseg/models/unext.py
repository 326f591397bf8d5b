"""UNeXt (Valanarasu & Patel, MICCAI 2022): conv stages, then tokenized shifted-MLP stages.

Layout of the reference implementation (widths 16, 32, 128 | 160, 256): three conv stages
(3x3 conv + BN, 2x max-pool, ReLU); two tokenized stages (overlapping 3x3 stride-2 patch
embedding + LayerNorm, a shifted-MLP block, LayerNorm); a decoder of 3x3 conv + BN, bilinear 2x
up-sampling, ReLU and addition of the encoder skip, with shifted-MLP blocks at the two token
levels; a 1x1 head. About 1.47 M parameters for 3 -> 1 channels. Input sides must divide by 32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.conv import Conv, DepthwiseConv
from jaxseg.models.layers import Dense, Norm, head, upsample2_bilinear

SHIFT_GROUPS = 5  # channel groups, shifted by -2..2 pixels


def shift_tokens(x, axis: int):
  """Splits channels into 5 groups and shifts group g by g - 2 pixels along `axis`, zero-filled
  (the reference's pad / roll / crop)."""
  pad = SHIFT_GROUPS // 2
  size = -(-x.shape[-1] // SHIFT_GROUPS)  # torch.chunk: equal chunks, a smaller last one
  out = []
  for g, start in enumerate(range(0, x.shape[-1], size)):
    chunk = x[..., start:start + size]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    padded = jnp.pad(chunk, widths)
    shift = g - pad
    out.append(jax.lax.slice_in_dim(padded, pad - shift, pad - shift + x.shape[axis], axis=axis))
  return jnp.concatenate(out, axis=-1)


class ShiftedMLPBlock(nn.Module):
  """x + MLP(LN(x)) with the MLP: shift along width, linear, depthwise 3x3, GELU, shift along
  height, linear (mlp ratio 1)."""

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
    y = Dense(dim, dtype=self.dtype)(shift_tokens(y, axis=2))
    y = DepthwiseConv((3, 3), padding=1, dtype=self.dtype, name="Conv_0")(y)
    y = nn.gelu(y, approximate=False)
    y = Dense(dim, dtype=self.dtype)(shift_tokens(y, axis=1))
    return x + y


class UNeXt(nn.Module):
  out_channels: int = 1
  features: int = 16  # first stage; stages are features x (1, 2, 8, 10, 16)
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.shape[1] % 32 or x.shape[2] % 32:
      raise ValueError(f"UNeXt needs input sides divisible by 32, got {x.shape[1:3]}")
    f = self.features
    c1, c2, c3, t1, t2 = f, 2 * f, 8 * f, 10 * f, 16 * f
    dt = self.dtype
    conv = lambda n, name, **kw: Conv(n, 3, dtype=dt, impl=self.conv_impl, name=name, **kw)  # noqa: E731
    norm = lambda name: Norm(self.norm, dt, name=name)  # noqa: E731
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=dt, name=name)  # noqa: E731
    x = x.astype(dt)
    skips = []
    for i, n in enumerate((c1, c2, c3)):
      # Conv -> norm -> max-pool -> ReLU; the conv's bias and the pool go to the norm, which
      # runs batch norm and the pool as one op (layers.Norm).
      z, conv_bias = conv(n, f"enc_conv{i}", return_bias=True)(x)
      x = nn.relu(norm(f"enc_bn{i}")(z, train, offset=conv_bias, then_max_pool=True))
      skips.append(x)
    for i, n in enumerate((t1, t2)):
      x = Conv(n, 3, 2, dtype=dt, impl=self.conv_impl, padding=1, name=f"patch_embed{i}")(x)
      x = ln(f"patch_norm{i}")(x)
      x = ln(f"token_norm{i}")(ShiftedMLPBlock(dt, name=f"token_block{i}")(x))
      if i == 0:
        skips.append(x)
    for i, n in enumerate((t1, c3, c2, c1)):
      # The conv's bias goes to the norm, as in the encoder: a batch norm cancels it in training.
      z, conv_bias = conv(n, f"dec_conv{i}", return_bias=True)(x)
      x = nn.relu(upsample2_bilinear(norm(f"dec_bn{i}")(z, train, offset=conv_bias)))
      x = x + skips[3 - i]
      if i < 2:
        x = ln(f"dec_token_norm{i}")(ShiftedMLPBlock(dt, name=f"dec_token_block{i}")(x))
    x = nn.relu(upsample2_bilinear(conv(c1, "dec_conv4")(x)))
    return head(self.out_channels, x, dt)
