"""BraTS / Decathlon Task01 (mission E): the 3-D net on whole cropped volumes, 4 modalities.

  jaxseg train --config=configs/brats_3d.py --workdir=runs/brats_3d \
      --config.data.root=/data/Task01_BrainTumour

Input 128 x 160 x 160 x 4 (the reference's 160 x 160 x 128 x 4), batch 2, lr 1e-4, CE + Dice;
3-D UNet with 16 base features and group norm (one or two volumes per device make batch
statistics noisy): 5,647,732 parameters (the reference 3-D net: 5,649,652). Remat keeps the
activations of a 128 x 160 x 160 volume within one GPU's memory. He-uniform kernel
initialisation, as the reference (Keras).
"""

from configs import brats_2d


def get_config():
  c = brats_2d.get_config()
  c.model.name = "unet3d"
  c.model.norm = "group"
  c.model.remat = True
  c.model.kernel_init = "he_uniform"
  c.data.depth = 128
  c.data.modalities = ()  # all four
  c.data.in_channels = 4
  # A 128 x 160 x 160 x 4 sample is 52 MB: reading it in-process beats shipping it from worker
  # processes (benchmarks/results/data-2026-11-25-cpu.md: 22.7 samples/s vs 9.5 with 1 worker).
  c.data.num_workers = 0
  c.data.batch_size = 2
  c.data.eval_batch_size = 2
  c.optim.lr = 1e-4
  c.train.steps = 40_000
  return c
