"""BraTS / Decathlon Task01 (mission E): the 2-D net on axial slices, 2 MRI channels.

  jaxseg train --config=configs/brats_2d.py --workdir=runs/brats_2d \
      --config.data.root=/data/Task01_BrainTumour

Volumes cropped to 128 x 160 x 160 (D, H, W), z-scored per modality on brain voxels; slices of
FLAIR and T1-Gd; 4 classes (background, edema, non-enhancing, enhancing); categorical CE + Dice
with equal weights; batch 144, lr 1e-3; split stratified by the tumour classes present.
UNet with 16 base features: 1,942,484 parameters (the reference 2-D net: 1,962,532).
"""

from jaxseg.config import default_config


def get_config():
  c = default_config()
  c.data.source = "decathlon"
  c.data.root = "Task01_BrainTumour"
  c.data.crop = (128, 160, 160)
  c.data.image_size = 160
  c.data.modalities = (0, 2)  # FLAIR, T1-Gd
  c.data.in_channels = 2
  c.data.num_classes = 4
  c.data.task = "multiclass"
  c.data.normalize = "none"  # the source z-scores on brain voxels
  c.data.batch_size = 144
  c.data.eval_batch_size = 144
  c.data.num_workers = 4
  c.data.split.val = 0.15
  c.data.split.test = 0.15
  c.model.name = "unet"
  c.model.features = 16
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr = 1e-5
  c.train.steps = 20_000
  c.train.eval_every = 1000
  c.train.log_every = 100
  return c
