"""The demo: a small UNet on the embedded MNI152 white-matter set, on the CPU in minutes.

  make demo
  # = jaxseg train --config=configs/demo.py --workdir=runs/demo

The data is real MRI shipped inside the nilearn wheel (see jaxseg/data/builtin.py), written once
in the LGG kaggle_3m layout and read through the same reader as the real LGG set. Images are
resized 256 -> 128 and the UNet is half-width so that 2 CPU cores train it in a few minutes.
"""

from jaxseg.config import default_config


def get_config():
  c = default_config()
  c.data.root = "builtin:mni152"
  c.data.image_size = 128
  c.data.batch_size = 8
  c.data.eval_batch_size = 16
  c.data.split.val = 0.17  # 2 of 12 slabs
  c.data.split.test = 0.17
  c.data.split.stratify = False  # every slab has white matter
  c.model.features = 16
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 30
  c.optim.min_lr = 1e-5
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 200
  return c
