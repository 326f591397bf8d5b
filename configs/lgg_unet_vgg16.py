"""LGG encoder study (mission A): UNet with a VGG16 encoder, all layers trained.

  jaxseg train --config=configs/lgg_unet_vgg16.py --workdir=runs/lgg_vgg16 \
      --config.data.root=/data/kaggle_3m --config.model.pretrained=/weights/vgg16.safetensors

`model.pretrained` takes torchvision's vgg16 state dict (.pth or .safetensors); without it the
encoder starts from random weights.
"""

from configs import lgg_unet


def get_config():
  c = lgg_unet.get_config()
  c.model.name = "unet_vgg16"
  c.model.features = 16  # decoder widths 256, 128, 64, 32, 16
  return c
