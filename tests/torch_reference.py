"""torchvision's VGG16, ResNet50 and EfficientNet-B3 rebuilt in plain torch with torchvision's module names, so
their state dicts have torchvision's keys. (torchvision itself needs a CUDA build of torch here;
plain torch CPU is enough for the layouts.) Each returns the feature maps the Flax encoders
return, in the same order."""

import torch
from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


class VGG16(nn.Module):
  def __init__(self):
    super().__init__()
    layers, c = [], 3
    for item in VGG16_CFG:
      if item == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c, item, 3, padding=1), nn.ReLU(inplace=True)]
        c = item
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Linear(8, 2)  # stands for torchvision's head; the importer skips it

  def forward(self, x):
    feats = []
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        feats.append(x)
      x = layer(x)
    return feats + [x]


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                    nn.BatchNorm2d(planes * 4)) if downsample else None

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet50(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for i, blocks in enumerate((3, 4, 6, 3)):
      planes = 64 * 2**i
      layer = []
      for b in range(blocks):
        layer.append(Bottleneck(inplanes, planes, 2 if (b == 0 and i > 0) else 1, b == 0))
        inplanes = planes * 4
      setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
    self.fc = nn.Linear(2048, 1000)  # present in torchvision's dict; the importer skips it

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    feats = [x]
    x = self.maxpool(x)
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
      feats.append(x)
    return feats


def _conv_bn(cin, cout, k, stride=1, groups=1, act=True):
  """torchvision's Conv2dNormActivation: children 0 (conv), 1 (BN), 2 (SiLU)."""
  layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
  return nn.Sequential(*layers, *([nn.SiLU()] if act else []))


class SqueezeExcitation(nn.Module):
  def __init__(self, channels, squeeze):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)

  def forward(self, x):
    s = x.mean((2, 3), keepdim=True)
    return x * torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(s))))


class MBConv(nn.Module):
  def __init__(self, cin, cout, expand, k, stride):
    super().__init__()
    width = cin * expand
    layers = [_conv_bn(cin, width, 1)] if expand != 1 else []
    layers += [_conv_bn(width, width, k, stride, groups=width),
               SqueezeExcitation(width, max(1, cin // 4)), _conv_bn(width, cout, 1, act=False)]
    self.block = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.block(x) if self.residual else self.block(x)


# B3's stages after width (x1.2, multiples of 8) and depth (x1.4, rounded up) scaling, written
# out rather than derived so the Flax encoder's derivation is checked against them.
EFFNET_B3 = ((1, 3, 1, 24, 2), (6, 3, 2, 32, 3), (6, 5, 2, 48, 3), (6, 3, 2, 96, 5),
             (6, 5, 1, 136, 5), (6, 5, 2, 232, 6), (6, 3, 1, 384, 2))


class EfficientNetB3(nn.Module):
  def __init__(self):
    super().__init__()
    stages, c = [_conv_bn(3, 40, 3, 2)], 40
    for expand, k, stride, out, blocks in EFFNET_B3:
      stages.append(nn.Sequential(*[MBConv(c if b == 0 else out, out, expand, k,
                                           stride if b == 0 else 1) for b in range(blocks)]))
      c = out
    stages.append(_conv_bn(384, 1536, 1))  # the head conv; the Flax encoder stops before it
    self.features = nn.Sequential(*stages)
    self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(1536, 1000))

  def forward(self, x):
    feats = []
    for i in range(8):
      if i >= 1 and EFFNET_B3[i - 1][2] == 2:  # stage i down-samples: keep the map before it
        feats.append(x)
      x = self.features[i](x)
    return feats + [x]


def randomize_batch_norm(model, seed=0):
  """Non-trivial running statistics and affine terms, so the import of each is checked."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
  return model
