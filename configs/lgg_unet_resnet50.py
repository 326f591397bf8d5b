"""LGG encoder study (mission A): UNet with a ResNet50 encoder, fine-tuned as a whole.

  jaxseg train --config=configs/lgg_unet_resnet50.py --workdir=runs/lgg_resnet50 \
      --config.data.root=/data/kaggle_3m --config.model.pretrained=/weights/resnet50.pth
"""

from configs import lgg_unet


def get_config():
  c = lgg_unet.get_config()
  c.model.name = "unet_resnet50"
  c.model.features = 16
  return c
