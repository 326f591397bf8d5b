"""LGG encoder study (mission A): ResNet50 UNet with the stem and the first two conv blocks
frozen (no updates, BatchNorm statistics kept).

  jaxseg train --config=configs/lgg_unet_resnet50_frozen2.py --workdir=runs/lgg_r50_frozen \
      --config.data.root=/data/kaggle_3m --config.model.pretrained=/weights/resnet50.pth
"""

from configs import lgg_unet_resnet50


def get_config():
  c = lgg_unet_resnet50.get_config()
  c.model.freeze = "stem,layer1,layer2"
  return c
