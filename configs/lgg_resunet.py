"""LGG architecture comparison (mission C): ResUNet, BCE + Dice, Adam lr 1e-4 with weight decay
1e-4, cosine annealing to 1e-5, batch 8, 20 epochs of the 2828-slice training split.

  jaxseg train --config=configs/lgg_resunet.py --workdir=runs/lgg_resunet \
      --config.data.root=/data/kaggle_3m
"""

from configs import lgg_unet


def get_config():
  c = lgg_unet.get_config()
  c.model.name = "resunet"
  c.model.features = 64
  c.model.depth = 3
  c.data.batch_size = 8
  c.data.eval_batch_size = 8
  c.optim.lr = 1e-4
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 0
  c.optim.min_lr = 1e-5
  c.train.steps = 20 * 2828 // 8  # 20 epochs
  c.train.eval_every = 2828 // 8  # every epoch
  return c
