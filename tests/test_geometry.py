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


def _warps():
  from jaxseg.data.transforms import Elastic, GridDistortion
  return {"ssr": ShiftScaleRotate(p=1.0, shift=0.1, scale=0.2, rotate=45),
          "elastic": Elastic(alpha=4.0), "grid": GridDistortion()}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("warp", ["ssr", "elastic", "grid"])
def test_warps_keep_image_and_mask_aligned(warp, seed):
  rng = np.random.default_rng(seed)
  mask = np.zeros((48, 48, 1), np.float32)
  mask[10:30, 14:40] = 1
  sample = {"image": mask * 100, "mask": mask}
  out = _warps()[warp].random_map(sample, rng)
  agree = ((out["image"][..., 0] > 50) == (out["mask"][..., 0] > 0.5)).mean()
  assert agree > 0.98 and not np.array_equal(out["mask"], mask)
  assert set(np.unique(out["mask"])) <= {0.0, 1.0}  # nearest: no blended labels


def test_on_device_augmentation_in_the_train_step():
  c = default_config()
  c.data.image_size, c.data.batch_size, c.model.features, c.model.depth = 32, 2, 4, 2
  c.data.augment.ssr, c.data.augment.on_device = 1.0, "device"
  exp = Experiment(c, "")
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
  state, acc = exp.train_step(state, _random_batch(exp), acc)
  assert int(state.step) == 1 and np.isfinite(float(acc["loss_sum"]))
  batch = {"image": jnp.ones((2, 8, 8, 1)), "mask": jnp.ones((2, 8, 8, 1))}
  warped = step_lib.device_augment(batch, jax.random.key(0), c.data.augment)
  assert warped["image"].shape == (2, 8, 8, 1)
  assert float(warped["image"].sum()) < 128  # rotated / shifted: zeros came in
  c.data.augment.ssr = 0.0
  same = step_lib.device_augment(batch, jax.random.key(0), c.data.augment)
  np.testing.assert_array_equal(same["image"], batch["image"])


# ---- elastic deformation and grid distortion ----


def _fields(seed, h=32, w=40):
  from scipy import ndimage
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=(2, 5, 5)).astype(np.float32)
  steps = rng.uniform(-0.3, 0.3, (2, 5)).astype(np.float32)
  host = [geometry.elastic_field(noise, h, w, 6.0, ndimage.map_coordinates),
          geometry.grid_distortion_field(steps, h, w)]
  device = [geometry.elastic_field(jnp.asarray(noise), h, w, 6.0,
                                   jax.scipy.ndimage.map_coordinates, xp=jnp),
            geometry.grid_distortion_field(jnp.asarray(steps), h, w, xp=jnp)]
  return host, device


@pytest.mark.parametrize("seed", range(3))
def test_elastic_and_grid_fields_and_warps_agree_on_host_and_device(seed):
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(32, 40, 3)).astype(np.float32)
  mask = (rng.random((32, 40, 2)) < 0.3).astype(np.float32)
  for h_src, d_src in zip(*_fields(seed), strict=True):
    np.testing.assert_allclose(np.asarray(d_src), h_src, atol=1e-4)
    src = jnp.asarray(h_src)  # the same field on both sides: the warps themselves agree
    np.testing.assert_allclose(np.asarray(geometry.warp_field_device(jnp.asarray(image), src,
                                                                     False)),
                               geometry.warp_field_host(image, h_src, False), atol=1e-4)
    np.testing.assert_array_equal(
        np.asarray(geometry.warp_field_device(jnp.asarray(mask), src, True)),
        geometry.warp_field_host(mask, h_src, True))


def test_grid_distortion_is_monotone_and_keeps_the_corners():
  steps = np.array([[0.3, -0.3, 0.2, -0.1, 0.0], [-0.2, 0.3, 0.3, -0.3, 0.1]], np.float32)
  src = geometry.grid_distortion_field(steps, 20, 30)
  rows, cols = src[0][:, 0], src[1][0, :]
  assert np.all(np.diff(rows) > 0) and np.all(np.diff(cols) > 0)
  assert rows[0] == 0 and rows[-1] == pytest.approx(19) and cols[-1] == pytest.approx(29)
  assert not np.allclose(rows, np.arange(20))
  zero = geometry.grid_distortion_field(np.zeros((2, 5), np.float32), 20, 30)
  np.testing.assert_allclose(zero[0][:, 0], np.arange(20), atol=1e-5)


def test_device_elastic_or_grid_warps_in_the_step():
  c = default_config()
  c.data.augment.elastic_or_grid, c.data.augment.elastic_alpha = 1.0, 3.0
  batch = {"image": jnp.tile(jnp.arange(16.0)[None, :, None, None], (2, 1, 16, 1)),
           "mask": jnp.ones((2, 16, 16, 1))}
  warped = step_lib.device_augment(batch, jax.random.key(1), c.data.augment)
  assert not np.allclose(warped["image"], batch["image"])
  c.data.augment.elastic_or_grid = 0.0
  same = step_lib.device_augment(batch, jax.random.key(1), c.data.augment)
  np.testing.assert_array_equal(same["image"], batch["image"])


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.5])
def test_device_blur_equals_scipys(sigma):
  from scipy import ndimage

  from jaxseg.data.transforms import gaussian_blur_device
  image = np.random.default_rng(0).normal(size=(12, 9, 2)).astype(np.float32)
  want = ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="nearest")
  got = gaussian_blur_device(jnp.asarray(image), jnp.float32(sigma), sigma_max=1.5)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_device_augment_warps_volumes_slice_by_slice_and_adds_noise():
  c = default_config()
  aug = c.data.augment
  aug.ssr, aug.ssr_rotate, aug.ssr_shift, aug.ssr_scale = 1.0, 30.0, 0.0, 0.0
  vol = jnp.tile(jnp.arange(16.0)[None, None, :, None, None], (1, 3, 1, 16, 1))  # [1,3,16,16,1]
  out = step_lib.device_augment({"image": vol, "mask": (vol > 7).astype(jnp.float32)},
                                jax.random.key(0), aug)
  assert out["image"].shape == vol.shape and not np.allclose(out["image"], vol)
  for d in (1, 2):  # every slice got the same in-plane warp
    np.testing.assert_array_equal(out["image"][0, d], out["image"][0, 0])
  aug.ssr, aug.noise_or_blur, aug.blur_sigma = 0.0, 1.0, 1.0
  img = {"image": jnp.zeros((64, 8, 8, 1)), "mask": jnp.zeros((64, 8, 8, 1))}
  noisy = np.asarray(step_lib.device_augment(img, jax.random.key(2), aug)["image"])
  changed = np.abs(noisy).reshape(64, -1).max(1) > 0
  assert 0.3 < changed.mean() < 0.7  # half noise (changes a zero image), half blur (does not)
