"""LGG architecture comparison (mission C): UNeXt, configuration 1 (batch 8, lr 1e-4; reported
test IoU 0.7553, Dice 0.8546). Configurations 2 and 3 are `sweep()` points:

  jaxseg train --config=configs/lgg_unext.py --workdir=runs/lgg_unext \
      --config.data.root=/data/kaggle_3m
  # configuration 2 (collapses in the reference): --config.optim.lr=1e-2
  # configuration 3: --config.data.batch_size=16
"""

from configs import lgg_resunet


def get_config():
  c = lgg_resunet.get_config()
  c.model.name = "unext"
  c.model.features = 16  # the reference widths 16, 32, 128, 160, 256
  return c


def sweep():
  """The three training configurations of the reference study."""
  return [{"optim.lr": 1e-4, "data.batch_size": 8},
          {"optim.lr": 1e-2, "data.batch_size": 8},
          {"optim.lr": 1e-4, "data.batch_size": 16}]
