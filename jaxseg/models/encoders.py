"""ImageNet backbones in torchvision's layout, as UNet encoders.

Module names follow torchvision's state-dict keys (`features.10.weight` -> `features_10`,
`layer2.0.downsample.1.running_var` -> `layer2_0/downsample_1`), so `pretrained.py` converts a
torchvision checkpoint by renaming alone. Padding is explicit (torch's symmetric padding; Flax's
"SAME" pads strided convs asymmetrically) so features equal torch's.

Each encoder returns its feature maps from fine to coarse: the skips for the decoder, and last
the bottom of the U.
"""

import flax.linen as nn
import jax.numpy as jnp

# VGG16 configuration "D": conv widths, "M" = 2x2 max-pool. Index i of `features` in torchvision
# counts convs, ReLUs and pools alike.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_POOLS = (4, 9, 16, 23, 30)  # `features` indices of the pools


def _conv(features, kernel, strides=1, padding=None, use_bias=False, dtype=jnp.float32, name=None):
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype, name=name)


def _bn(train, dtype, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class VGG16Encoder(nn.Module):
  """torchvision vgg16().features: five blocks of 3x3 convs (with bias) + ReLU, each ending in a
  max-pool. Features: the five block outputs before their pools (1, 1/2, 1/4, 1/8, 1/16) and
  the last pool's output (1/32)."""

  dtype: jnp.dtype = jnp.float32
  # Block index -> stage name used for freezing: block1 ... block5.
  STAGES = ("block1", "block2", "block3", "block4", "block5")

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    feats, index = [], 0
    for item in VGG16:
      if item == "M":
        feats.append(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        index += 1
      else:
        x = nn.relu(_conv(item, 3, use_bias=True, dtype=self.dtype, name=f"features_{index}")(x))
        index += 2  # conv and ReLU
    return feats + [x]

  @staticmethod
  def stage_of(path: str) -> str:
    """'features_12' -> 'block3' (the block whose pool follows)."""
    index = int(path.split("_")[1])
    return VGG16Encoder.STAGES[sum(pool < index for pool in _VGG_POOLS)]


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

  planes: int
  strides: int = 1
  downsample: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(_bn(train, self.dtype, "bn1")(_conv(self.planes, 1, dtype=self.dtype,
                                                    name="conv1")(x)))
    y = nn.relu(_bn(train, self.dtype, "bn2")(_conv(self.planes, 3, self.strides,
                                                    dtype=self.dtype, name="conv2")(y)))
    y = _bn(train, self.dtype, "bn3")(_conv(self.planes * 4, 1, dtype=self.dtype,
                                            name="conv3")(y))
    if self.downsample:
      x = _bn(train, self.dtype, "downsample_1")(
          _conv(self.planes * 4, 1, self.strides, dtype=self.dtype, name="downsample_0")(x))
    return nn.relu(x + y)


class ResNet50Encoder(nn.Module):
  """torchvision resnet50() without its head. Features: the stem (1/2, 64), layer1 (1/4, 256),
  layer2 (1/8, 512), layer3 (1/16, 1024) and layer4 (1/32, 2048)."""

  dtype: jnp.dtype = jnp.float32
  LAYERS = (3, 4, 6, 3)
  STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(64, 7, 2, padding=3, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_bn(train, self.dtype, "bn1")(x))
    feats = [x]
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for layer, blocks in enumerate(self.LAYERS):
      planes = 64 * 2**layer
      for b in range(blocks):
        x = Bottleneck(planes, strides=2 if (b == 0 and layer > 0) else 1, downsample=b == 0,
                       dtype=self.dtype, name=f"layer{layer + 1}_{b}")(x, train)
      feats.append(x)
    return feats

  @staticmethod
  def stage_of(path: str) -> str:
    """'layer2_3' -> 'layer2'; 'conv1' / 'bn1' -> 'stem'."""
    return path.split("_")[0] if path.startswith("layer") else "stem"


ENCODERS = {"vgg16": VGG16Encoder, "resnet50": ResNet50Encoder}
