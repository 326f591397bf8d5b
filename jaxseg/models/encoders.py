"""ImageNet backbones in torchvision's layout, as UNet encoders.

Module names follow torchvision's state-dict keys (`features.10.weight` -> `features_10`,
`layer2.0.downsample.1.running_var` -> `layer2_0/downsample_1`), so `pretrained.py` converts a
torchvision checkpoint by renaming alone. Padding is explicit (torch's symmetric padding; Flax's
"SAME" pads strided convs asymmetrically) so features equal torch's.

Each encoder returns its feature maps from fine to coarse: the skips for the decoder, and last
the bottom of the U.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.batch_norm import BatchNorm
from jaxseg.models.conv import Conv, DepthwiseConv
from jaxseg.models.pooling import max_pool

# VGG16 configuration "D": conv widths, "M" = 2x2 max-pool. Index i of `features` in torchvision
# counts convs, ReLUs and pools alike.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_POOLS = (4, 9, 16, 23, 30)  # `features` indices of the pools


def _conv(module, features, kernel, strides=1, padding=None, use_bias=False, name=None):
  """torchvision's Conv2d (symmetric padding, kernel // 2 by default) in `module`'s dtype and
  conv_impl."""
  pad = kernel // 2 if padding is None else padding
  return Conv(features, kernel, strides, use_bias, module.dtype, module.conv_impl, padding=pad,
              name=name)


def _bn(train, dtype, name, act=None):
  """torchvision's BatchNorm2d (with the activation after it, "relu" or "silu", when `act`):
  nn.BatchNorm's variables, run as one op with the activation (jaxseg.models.batch_norm)."""
  bn = BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
  return lambda x: bn(x, train, act=act)


class VGG16Encoder(nn.Module):
  """torchvision vgg16().features: five blocks of 3x3 convs (with bias) + ReLU, each ending in a
  max-pool. Features: the five block outputs before their pools (1, 1/2, 1/4, 1/8, 1/16) and
  the last pool's output (1/32)."""

  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl
  # Block index -> stage name used for freezing: block1 ... block5.
  STAGES = ("block1", "block2", "block3", "block4", "block5")
  IGNORED = ()  # torchvision keys outside the encoder beyond the shared head prefixes

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    feats, index = [], 0
    for item in VGG16:
      if item == "M":
        feats.append(x)
        x = max_pool(x)  # 2x2 / 2, as nn.max_pool but with a cheap gradient (layers.py)
        index += 1
      else:
        x = nn.relu(_conv(self, item, 3, use_bias=True, name=f"features_{index}")(x))
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
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    y = _bn(train, self.dtype, "bn1", act="relu")(_conv(self, self.planes, 1, name="conv1")(x))
    y = _bn(train, self.dtype, "bn2", act="relu")(_conv(self, self.planes, 3, self.strides,
                                                       name="conv2")(y))
    y = _bn(train, self.dtype, "bn3")(_conv(self, self.planes * 4, 1, name="conv3")(y))
    if self.downsample:
      x = _bn(train, self.dtype, "downsample_1")(
          _conv(self, self.planes * 4, 1, self.strides, name="downsample_0")(x))
    return nn.relu(x + y)


class ResNet50Encoder(nn.Module):
  """torchvision resnet50() without its head. Features: the stem (1/2, 64), layer1 (1/4, 256),
  layer2 (1/8, 512), layer3 (1/16, 1024) and layer4 (1/32, 2048)."""

  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"
  LAYERS = (3, 4, 6, 3)
  STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
  IGNORED = ()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(self, 64, 7, 2, padding=3, name="conv1")(x)
    x = _bn(train, self.dtype, "bn1", act="relu")(x)
    feats = [x]
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for layer, blocks in enumerate(self.LAYERS):
      planes = 64 * 2**layer
      for b in range(blocks):
        x = Bottleneck(planes, strides=2 if (b == 0 and layer > 0) else 1, downsample=b == 0,
                       dtype=self.dtype, conv_impl=self.conv_impl,
                       name=f"layer{layer + 1}_{b}")(x, train)
      feats.append(x)
    return feats

  @staticmethod
  def stage_of(path: str) -> str:
    """'layer2_3' -> 'layer2'; 'conv1' / 'bn1' -> 'stem'."""
    return path.split("_")[0] if path.startswith("layer") else "stem"


# EfficientNet-B0 stages (expand ratio, kernel, stride, output width, blocks); B3 scales widths
# by 1.2 (rounded to multiples of 8) and block counts by 1.4 (rounded up), as torchvision does.
_EFFNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _round_width(width: float, divisor: int = 8) -> int:
  rounded = max(divisor, int(width + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * width else rounded


class MBConv(nn.Module):
  """Inverted residual with squeeze-excitation (torchvision's MBConv, SiLU): 1x1 expand (absent
  at ratio 1), depthwise kxk, SE (squeeze to a quarter of the block's input width), 1x1
  project without activation, identity shortcut when shape allows. Submodule names follow
  torchvision's `block.<i>` numbering, which shifts by one without the expand conv.

  torchvision drops blocks at random in training (stochastic depth); this one does not, so
  inference is identical and training is slightly less regularised."""

  expand: int
  kernel: int
  strides: int
  out: int
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    width, i, y = x.shape[-1] * self.expand, 0, x
    if self.expand != 1:
      y = _bn(train, self.dtype, "block_0_1", act="silu")(
          _conv(self, width, 1, name="block_0_0")(y))
      i = 1
    pad = self.kernel // 2
    y = DepthwiseConv((self.kernel, self.kernel), self.strides, pad, use_bias=False,
                      dtype=self.dtype, name=f"block_{i}_0")(y)
    y = _bn(train, self.dtype, f"block_{i}_1", act="silu")(y)
    y = SqueezeExcite(max(1, x.shape[-1] // 4), self.dtype, self.conv_impl,
                      name=f"block_{i + 1}")(y)
    y = _bn(train, self.dtype, f"block_{i + 2}_1")(
        _conv(self, self.out, 1, name=f"block_{i + 2}_0")(y))
    return x + y if self.strides == 1 and x.shape[-1] == self.out else y


class SqueezeExcite(nn.Module):
  squeeze: int
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.silu(_conv(self, self.squeeze, 1, use_bias=True, name="fc1")(s))
    s = _conv(self, x.shape[-1], 1, use_bias=True, name="fc2")(s)
    return x * nn.sigmoid(s)


class EfficientNetB3Encoder(nn.Module):
  """torchvision efficientnet_b3().features[0:8]: the stem conv (40, 1/2) and seven MBConv stages.
  Features: the last map at each resolution, stage1 (24, 1/2), stage2 (32, 1/4), stage3 (48,
  1/8), stage5 (136, 1/16) and stage7 (384, 1/32). Like segmentation_models' encoders it stops
  before the 1x1 head conv to 1536 channels (`features.8`), which the importer skips."""

  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"  # jaxseg.models.conv.Conv's impl (the depthwise ones stay XLA's)
  STAGES = ("stem",) + tuple(f"stage{i}" for i in range(1, 8))
  IGNORED = ("features.8.",)
  WIDTH, DEPTH = 1.2, 1.4

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(self, _round_width(32 * self.WIDTH), 3, 2, name="features_0_0")(x)
    x = _bn(train, self.dtype, "features_0_1", act="silu")(x)
    feats = []
    for stage, (expand, kernel, strides, out, blocks) in enumerate(_EFFNET_B0, start=1):
      if strides == 2:  # the map before each down-sampling stage is the last at its resolution
        feats.append(x)
      for b in range(math.ceil(blocks * self.DEPTH)):
        x = MBConv(expand, kernel, strides if b == 0 else 1, _round_width(out * self.WIDTH),
                   self.dtype, self.conv_impl, name=f"features_{stage}_{b}")(x, train)
    return feats + [x]

  @staticmethod
  def stage_of(path: str) -> str:
    """'features_6_3' -> 'stage6'; 'features_0_0' -> 'stem'."""
    stage = int(path.split("_")[1])
    return f"stage{stage}" if stage else "stem"


ENCODERS = {"vgg16": VGG16Encoder, "resnet50": ResNet50Encoder,
            "efficientnet_b3": EfficientNetB3Encoder}


def encode(encoder: str, x, dtype, train: bool, conv_impl: str = "auto",
           name: str = "encoder"):
  """The named encoder's features of `x` (as a submodule called `name` of the calling module),
  after checking that the input halves five times."""
  if x.shape[1] % 32 or x.shape[2] % 32:
    raise ValueError(f"the {encoder} encoder needs input sides divisible by 32, got "
                     f"{x.shape[1:3]}")
  return ENCODERS[encoder](dtype, conv_impl, name=name)(x.astype(dtype), train)
