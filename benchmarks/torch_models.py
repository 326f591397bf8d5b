"""PyTorch twins of jaxseg's classic LGG UNet and UNeXt, for the JAX / PyTorch comparison in
benchmarks/vs_torch.py only (torch is not a jaxseg dependency). Same layers, widths, parameter
counts, loss (BCE + soft Dice) and optimizer (Adam) as the Flax models in jaxseg.models.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                     nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                     nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
  """jaxseg.models.unet.UNet(features=32, depth=4): 7,763,041 parameters for 3 -> 1."""

  def __init__(self, cin=3, cout=1, f=32, depth=4):
    super().__init__()
    self.enc = nn.ModuleList()
    c = cin
    for level in range(depth):
      self.enc.append(DoubleConv(c, f * 2**level))
      c = f * 2**level
    self.bottleneck = DoubleConv(c, f * 2**depth)
    self.up, self.dec = nn.ModuleList(), nn.ModuleList()
    for level in reversed(range(depth)):
      self.up.append(nn.ConvTranspose2d(f * 2**(level + 1), f * 2**level, 2, stride=2))
      self.dec.append(DoubleConv(f * 2**(level + 1), f * 2**level))
    self.head = nn.Conv2d(f, cout, 1)

  def forward(self, x):
    skips = []
    for block in self.enc:
      x = block(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottleneck(x)
    for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
      x = dec(torch.cat([up(x), skip], 1))
    return self.head(x)


def shift_tokens(x, dim):
  """Channel groups of 5 shifted by -2..2 along `dim` (2 = H, 3 = W of NCHW), zero-filled."""
  size = math.ceil(x.shape[1] / 5)
  out = []
  for g, chunk in enumerate(torch.split(x, size, dim=1)):
    shift = g - 2
    pad = [0, 0, 0, 0]  # (W left, W right, H top, H bottom)
    side = 0 if dim == 3 else 2
    pad[side], pad[side + 1] = 2, 2
    padded = F.pad(chunk, pad)
    out.append(padded.narrow(dim, 2 - shift, x.shape[dim]))
  return torch.cat(out, 1)


class ShiftedMLPBlock(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.norm = nn.LayerNorm(dim)
    self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
    self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

  def forward(self, x):  # NCHW
    y = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    y = self.fc1(shift_tokens(y, 3).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    y = F.gelu(self.dw(y))
    y = self.fc2(shift_tokens(y, 2).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return x + y


class ChannelNorm(nn.LayerNorm):
  def forward(self, x):
    return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UNeXt(nn.Module):
  """jaxseg.models.unext.UNeXt(features=16): 1,471,921 parameters for 3 -> 1."""

  def __init__(self, cin=3, cout=1, f=16):
    super().__init__()
    c1, c2, c3, t1, t2 = f, 2 * f, 8 * f, 10 * f, 16 * f
    self.enc = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in
                              ((cin, c1), (c1, c2), (c2, c3))])
    self.enc_bn = nn.ModuleList([nn.BatchNorm2d(n) for n in (c1, c2, c3)])
    self.embed = nn.ModuleList([nn.Conv2d(c3, t1, 3, 2, 1), nn.Conv2d(t1, t2, 3, 2, 1)])
    self.embed_norm = nn.ModuleList([ChannelNorm(t1), ChannelNorm(t2)])
    self.blocks = nn.ModuleList([ShiftedMLPBlock(t1), ShiftedMLPBlock(t2)])
    self.block_norm = nn.ModuleList([ChannelNorm(t1), ChannelNorm(t2)])
    self.dec = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in
                              ((t2, t1), (t1, c3), (c3, c2), (c2, c1))])
    self.dec_bn = nn.ModuleList([nn.BatchNorm2d(n) for n in (t1, c3, c2, c1)])
    self.dec_blocks = nn.ModuleList([ShiftedMLPBlock(t1), ShiftedMLPBlock(c3)])
    self.dec_norm = nn.ModuleList([ChannelNorm(t1), ChannelNorm(c3)])
    self.dec_last = nn.Conv2d(c1, c1, 3, padding=1)
    self.head = nn.Conv2d(c1, cout, 1)

  def forward(self, x):
    up = lambda y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    skips = []
    for conv, bn in zip(self.enc, self.enc_bn, strict=True):
      x = F.relu(F.max_pool2d(bn(conv(x)), 2))
      skips.append(x)
    for i in range(2):
      x = self.block_norm[i](self.blocks[i](self.embed_norm[i](self.embed[i](x))))
      if i == 0:
        skips.append(x)
    for i in range(4):
      x = F.relu(up(self.dec_bn[i](self.dec[i](x)))) + skips[3 - i]
      if i < 2:
        x = self.dec_norm[i](self.dec_blocks[i](x))
    return self.head(F.relu(up(self.dec_last(x))))


def seg_loss(logits, mask, smooth=1.0):
  """BCE-with-logits + soft Dice (per example, then mean), jaxseg.losses' binary loss."""
  bce = F.binary_cross_entropy_with_logits(logits, mask)
  p = torch.sigmoid(logits)
  inter = (p * mask).sum((1, 2, 3))
  dice = (2 * inter + smooth) / (p.sum((1, 2, 3)) + mask.sum((1, 2, 3)) + smooth)
  return bce + (1 - dice).mean()


MODELS = {"unet": UNet, "unext": UNeXt}
