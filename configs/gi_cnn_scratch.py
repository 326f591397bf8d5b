"""UW-Madison GI tract (mission B): the from-scratch residual encoder-decoder CNN.

  jaxseg train --config=configs/gi_cnn_scratch.py --workdir=runs/gi_scratch \
      --config.data.root=/data/uw-madison-gi-tract-image-segmentation

Reference recipe: 3 multi-label outputs (large bowel, small bowel, stomach), 224x224 input,
0.4 Dice + 0.6 BCE, RMSprop lr 5e-4 momentum 0.9, cosine annealing T_max 50 epochs to 1e-5,
batch 16, 30 epochs, weighted sampler 1 / organ-combination count, 80/10/10 split, best
validation Dice kept. Conv-BN-ReLU-Dropout2d(0.1) residual blocks. Augmentation: flips and
shift-scale-rotate (shift 0.03, scale 0.1, rotate 20 degrees, p 0.85), one of {elastic, grid
distortion} p 0.2, one of {Gaussian noise, blur} p 0.5 (warps, noise and blur run in the jitted
step on GPUs / TPUs: data.augment.on_device=auto); CLAHE (clip 2, 8 x 8 tiles) on every image,
train and test. Each preprocessed slice is cached under ~/.cache/jaxseg/samples
(`data.sample_cache`; `--config.data.sample_cache=` turns it off).
"""

from jaxseg.config import default_config

TRAIN_SLICES = 13_272  # 80 % of the 16,590 labelled slices
STEPS_PER_EPOCH = TRAIN_SLICES // 16


def get_config():
  c = default_config()
  c.data.source = "gi"
  c.data.root = "uw-madison-gi-tract-image-segmentation"
  c.data.image_size = 224
  c.data.in_channels = 3  # the slice and its two neighbours (2.5-D)
  c.data.num_classes = 3
  c.data.task = "multilabel"
  c.data.sampler = "balanced"
  c.data.batch_size = 16
  c.data.eval_batch_size = 16
  c.data.num_workers = 4
  c.data.split.val = 0.1
  c.data.split.test = 0.1
  c.data.augment.rot90 = 0.0  # anatomy has an up: flips and small rotations only
  c.data.augment.ssr = 0.85
  c.data.augment.ssr_shift = 0.03
  c.data.augment.ssr_scale = 0.1
  c.data.augment.ssr_rotate = 20.0
  c.data.augment.noise_or_blur = 0.5
  c.data.augment.elastic_or_grid = 0.2
  c.data.augment.elastic_alpha = 8.0  # pixels at 224
  c.data.clahe_clip = 2.0  # always, train and test
  c.data.clahe_tiles = 8
  # Each slice after reading, resize and CLAHE kept on disk (~300 KB at 224 px): from the second
  # epoch the loader skips ~6.5 ms of decoding per sample (jaxseg.data.sample_cache).
  c.data.sample_cache = "auto"
  c.model.name = "unet"
  c.model.features = 56
  c.model.residual = True
  c.model.dropout = 0.1
  c.loss.bce_weight = 0.6
  c.loss.dice_weight = 0.4
  c.optim.name = "rmsprop"
  c.optim.lr = 5e-4
  c.optim.momentum = 0.9
  c.optim.min_lr = 1e-5
  c.optim.decay_steps = 50 * STEPS_PER_EPOCH  # T_max 50 epochs
  c.train.steps = 30 * STEPS_PER_EPOCH
  c.train.eval_every = STEPS_PER_EPOCH
  c.train.log_every = 100
  return c
