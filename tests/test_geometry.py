"""Shift-scale-rotate: host and device warps agree; image and mask stay aligned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.bench import _random_batch
from jaxseg.config import default_config
from jaxseg.data import geometry
from jaxseg.data.transforms import ShiftScaleRotate
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


@pytest.mark.parametrize("seed", range(4))
def test_host_and_device_warps_agree(seed):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(32, 40, 3)).astype(np.float32)
  mask = (rng.random((32, 40, 2)) < 0.3).astype(np.float32)
  m, offset = geometry.ssr_params(rng.random(4), 32, 40, shift=0.1, scale=0.2, rotate=30)
  dm, doff = jnp.asarray(m, jnp.float32), jnp.asarray(offset, jnp.float32)
  np.testing.assert_allclose(np.asarray(geometry.warp_device(jnp.asarray(image), dm, doff, False)),
                             geometry.warp_host(image, m, offset, False), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(geometry.warp_device(jnp.asarray(mask), dm, doff, True)),
                                geometry.warp_host(mask, m, offset, True))


def test_identity_parameters_leave_the_image_unchanged():
  image = np.random.default_rng(0).normal(size=(8, 9, 1)).astype(np.float32)
  m, offset = geometry.ssr_params(np.full(4, 0.5), 8, 9, 0.1, 0.1, 10)  # all ranges' midpoints
  np.testing.assert_allclose(geometry.warp_host(image, m, offset, False), image, atol=1e-5)


def test_pure_shift_moves_content_by_whole_pixels():
  image = np.zeros((10, 10, 1), np.float32)
  image[4, 4] = 1.0
  # u = 0.75 -> shift of +0.5 * 0.2 * 10 = 1 pixel down and right
  m, offset = geometry.ssr_params(np.array([0.75, 0.75, 0.5, 0.5]), 10, 10, 0.2, 0.0, 0.0)
  out = geometry.warp_host(image, m, offset, nearest=True)
  assert out[5, 5, 0] == 1.0 and out.sum() == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_transform_keeps_image_and_mask_aligned(seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros((48, 48, 1), np.float32)
  mask[10:30, 14:40] = 1
  sample = {"image": mask * 100, "mask": mask}
  out = ShiftScaleRotate(p=1.0, shift=0.1, scale=0.2, rotate=45).random_map(sample, rng)
  agree = ((out["image"][..., 0] > 50) == (out["mask"][..., 0] > 0.5)).mean()
  assert agree > 0.98 and not np.array_equal(out["mask"], mask)


def test_on_device_augmentation_in_the_train_step():
  c = default_config()
  c.data.image_size, c.data.batch_size, c.model.features, c.model.depth = 32, 2, 4, 2
  c.data.augment.ssr, c.data.augment.on_device = 1.0, True
  exp = Experiment(c, "")
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
  state, acc = exp.train_step(state, _random_batch(exp), acc)
  assert int(state.step) == 1 and np.isfinite(float(acc["loss_sum"]))
  batch = {"image": jnp.ones((2, 8, 8, 1)), "mask": jnp.ones((2, 8, 8, 1))}
  warped = step_lib.device_shift_scale_rotate(batch, jax.random.key(0), c.data.augment)
  assert warped["image"].shape == (2, 8, 8, 1)
  assert float(warped["image"].sum()) < 128  # rotated / shifted: zeros came in
  c.data.augment.ssr = 0.0
  same = step_lib.device_shift_scale_rotate(batch, jax.random.key(0), c.data.augment)
  np.testing.assert_array_equal(same["image"], batch["image"])
