"""torchvision's VGG16 and ResNet50 rebuilt in plain torch with torchvision's module names, so
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
