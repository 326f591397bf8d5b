"""LGG brain MRI (kaggle_3m), the classic UNet of Buda et al. (mission A, C, D).

  jaxseg train --config=configs/lgg_unet.py --workdir=runs/lgg_unet \
      --config.data.root=/path/to/kaggle_3m
"""

from jaxseg.config import default_config


def get_config():
  c = default_config()
  c.data.root = "kaggle_3m"
  c.data.image_size = 256
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.data.num_workers = 4
  c.model.name = "unet"
  c.model.features = 32
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 200
  c.optim.min_lr = 1e-5
  c.train.steps = 20_000  # about 110 epochs of the 2828-slice training split
  c.train.eval_every = 1000
  c.train.log_every = 100
  return c
