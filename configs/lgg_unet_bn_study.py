"""LGG UNet batch-norm and hyper-parameter study (mission D): Dice loss, Adam, sigmoid output.

  jaxseg train --config=configs/lgg_unet_bn_study.py --workdir=runs/bn_on \
      --config.data.root=/data/kaggle_3m
  jaxseg train --config=configs/lgg_unet_bn_study.py --workdir=runs/bn_off \
      --config.data.root=/data/kaggle_3m --config.model.norm=none

`sweep()` lists the study's grid: batch norm on/off x lr {0.1, 0.01, 1e-4} for 100 epochs, and
batch {16, 32, 64} x lr {1e-4, 0.1} for 30 epochs (run each point with its overrides).
"""

from configs import lgg_unet

TRAIN_SLICES = 2828


def get_config():
  c = lgg_unet.get_config()
  c.loss.bce_weight = 0.0  # Dice loss alone
  c.loss.dice_weight = 1.0
  c.optim.warmup_steps = 0
  c.optim.min_lr = c.optim.lr  # constant learning rate, as the study ran
  c.data.batch_size = 16
  c.train.steps = 100 * TRAIN_SLICES // 16
  c.train.eval_every = TRAIN_SLICES // 16
  return c


def sweep():
  points = [{"model.norm": norm, "optim.lr": lr, "optim.min_lr": lr,
             "train.steps": 100 * TRAIN_SLICES // 16}
            for norm in ("batch", "none") for lr in (0.1, 0.01, 1e-4)]
  points += [{"data.batch_size": bs, "optim.lr": lr, "optim.min_lr": lr,
              "train.steps": 30 * TRAIN_SLICES // bs, "train.eval_every": TRAIN_SLICES // bs}
             for bs in (16, 32, 64) for lr in (1e-4, 0.1)]
  return points
