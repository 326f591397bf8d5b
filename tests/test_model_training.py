"""Each network family: finite gradients, and a few steps on a learnable toy task lower the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.config import default_config
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


def _toy_batch(shape, batch=4):
  # Noise on a coarse grid, blown up 4x: blobs a network that down-samples early can still
  # outline; the mask is channel 0 thresholded, so the task is learnable from the image alone.
  rng = np.random.default_rng(0)
  spatial = shape[:-1]
  coarse = rng.normal(size=(batch, *[s // 4 for s in spatial], shape[-1]))
  image = coarse
  for axis in range(1, len(spatial) + 1):
    image = np.repeat(image, 4, axis=axis)
  image = image.astype(np.float32)
  mask = (image[..., :1] > 0.3).astype(np.float32)
  return {"image": image, "mask": mask}


@pytest.mark.parametrize("name,size,depth,kw", [
    ("unet", 32, 0, {"features": 4, "depth": 2, "dropout": 0.1, "residual": True}),
    ("unet3d", 16, 8, {"features": 4, "depth": 2, "norm": "group"}),
    ("resunet", 32, 0, {"features": 4, "depth": 2}),
    ("unext", 32, 0, {"features": 8}),
])
def test_few_steps_lower_the_loss(name, size, depth, kw):
  c = default_config()
  c.data.image_size, c.data.depth, c.data.in_channels = size, depth, 2
  c.data.batch_size = 4
  c.model.name = name
  c.model.update(kw)
  c.optim.lr, c.train.steps = 1e-2, 100
  exp = Experiment(c, "")
  state = exp.init_state()
  batch = jax.device_put(_toy_batch(exp.input_shape), exp.batch_sharding)
  losses = []
  for _ in range(25):
    acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
    state, acc = exp.train_step(state, batch, acc)
    losses.append(float(acc["loss_sum"]))
  assert np.isfinite(losses).all()
  assert all(jnp.isfinite(p).all() for p in jax.tree.leaves(state.params))
  assert losses[-1] < 0.85 * losses[0], losses
