"""BraTS / Decathlon Task01 (mission E): the 3-D net on whole cropped volumes, 4 modalities.

  jaxseg train --config=configs/brats_3d.py --workdir=runs/brats_3d \
      --config.data.root=/data/Task01_BrainTumour

Input 128 x 160 x 160 x 4 (the reference's 160 x 160 x 128 x 4), batch 2, lr 1e-4, CE + Dice;
3-D UNet with 16 base features and group norm (one or two volumes per device make batch
statistics noisy): 5,647,732 parameters (the reference 3-D net: 5,649,652). He-uniform kernel
initialisation, as the reference (Keras).

No remat (`model.remat`): XLA's memory analysis of this step finds it saves nothing here, as a
UNet's peak is at full resolution, where the backward pass needs those activations anyway
(float32 on the CPU: 17.57 GiB of temporaries with it, 16.49 without; with XLA's own 3-D
convolutions, the form GPUs run, compiled on the CPU: 8.40 and 8.30 GiB, bfloat16 9.26 and
9.03), while it recomputes every block: the CPU step 21.6-22.4 s with it, 19.1-19.2 s without
(BUILD.md performance notes).
"""

from configs import brats_2d


def get_config():
  c = brats_2d.get_config()
  c.model.name = "unet3d"
  c.model.norm = "group"
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
