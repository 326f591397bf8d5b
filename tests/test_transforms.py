import numpy as np
import pytest

from jaxseg.data.transforms import FlipRot90, Preprocess, normalize, resize


def _sample(size=12):
  rng = np.random.default_rng(0)
  mask = (rng.random((size, size, 1)) < 0.3).astype(np.float32)
  # The image carries the mask in channel 0, so alignment is checkable after any warp.
  image = np.concatenate([mask * 100, rng.normal(size=(size, size, 2))], -1).astype(np.float32)
  return {"image": image, "mask": mask, "case_id": "P"}


@pytest.mark.parametrize("seed", range(8))
def test_flip_rot_keeps_image_and_mask_aligned(seed):
  s = _sample()
  out = FlipRot90(1.0, 1.0, 1.0).random_map(s, np.random.default_rng(seed))
  np.testing.assert_array_equal(out["image"][..., 0], out["mask"][..., 0] * 100)
  assert out["case_id"] == "P" and out["image"].flags.c_contiguous


def test_flip_rot_probabilities_zero_is_identity_and_one_changes():
  s = _sample()
  same = FlipRot90(0.0, 0.0, 0.0).random_map(s, np.random.default_rng(0))
  np.testing.assert_array_equal(same["mask"], s["mask"])
  changed = [not np.array_equal(FlipRot90(1.0, 0.0, 0.0).random_map(s, np.random.default_rng(i))
                                ["mask"], s["mask"]) for i in range(3)]
  assert all(changed)


def test_resize_nearest_keeps_mask_binary_and_bilinear_interpolates():
  mask = np.zeros((4, 4, 1), np.float32)
  mask[:2] = 1
  up = resize(mask, (8, 8), nearest=True)
  assert up.shape == (8, 8, 1) and set(np.unique(up)) == {0.0, 1.0} and up[:4].all()
  ramp = np.tile(np.arange(4, dtype=np.float32)[None, :, None], (4, 1, 2))
  down = resize(ramp, (4, 2), nearest=False)
  assert down.shape == (4, 2, 2) and 0 < down[0, 0, 0] < down[0, 1, 0] < 3


def test_normalize_per_channel_and_constant_channel():
  x = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 7.0)], -1)
  y = normalize(x)
  np.testing.assert_allclose(y[..., 0].mean(), 0, atol=1e-6)
  np.testing.assert_allclose(y[..., 0].std(), 1, atol=1e-5)
  np.testing.assert_array_equal(y[..., 1], 0)


def test_normalize_matches_float64_per_channel_statistics():
  # Volumes (D, H, W, C) and images alike: every leading axis is pooled, channels kept apart.
  x = np.random.default_rng(1).normal(3.0, [1.0, 5.0, 0.1], (6, 20, 20, 3)).astype(np.float32)
  ref = (x - x.astype(np.float64).mean((0, 1, 2))) / x.astype(np.float64).std((0, 1, 2))
  y = normalize(x)
  assert y.shape == x.shape and y.dtype == np.float32
  np.testing.assert_allclose(y, ref, atol=2e-5)


def test_preprocess_resizes_and_normalizes():
  s = {"image": np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8),
       "mask": np.ones((16, 16, 1), np.float32)}
  out = Preprocess(8).map(s)
  assert out["image"].shape == (8, 8, 3) and out["image"].dtype == np.float32
  assert out["mask"].shape == (8, 8, 1) and out["mask"].all()
  np.testing.assert_allclose(out["image"].mean((0, 1)), 0, atol=1e-5)


def test_intensity_transforms_change_the_image_only():
  from jaxseg.data.transforms import (
      BrightnessContrast,
      Compose,
      GaussianNoise,
      OneOf,
      brightness_contrast,
      gaussian_blur,
      gaussian_noise,
  )
  rng = np.random.default_rng(0)
  image = rng.normal(size=(64, 64, 2)).astype(np.float32)
  noisy = gaussian_noise(image, rng, 0.5)
  assert (noisy - image).std() == pytest.approx(0.5, rel=0.05)
  blurred = gaussian_blur(image, rng, 2.0)
  assert blurred.std() < 0.7 * image.std()
  # blur stays within each channel
  one = np.zeros((16, 16, 2), np.float32)
  one[8, 8, 0] = 1
  assert gaussian_blur(one, rng, 1.0)[..., 1].max() == 0
  bc = brightness_contrast(image, np.random.default_rng(1), 0.2, 0.2)
  ratio = bc.std() / image.std()
  assert 0.8 <= ratio <= 1.2 and abs(bc.mean() - image.mean() * ratio) <= 0.21
  s = _sample()
  out = Compose((GaussianNoise(0.1), BrightnessContrast())).random_map(
      s, np.random.default_rng(3))
  np.testing.assert_array_equal(out["mask"], s["mask"])
  assert not np.array_equal(out["image"], s["image"])
  same = OneOf((GaussianNoise(0.1),), p=0.0).random_map(s, np.random.default_rng(3))
  np.testing.assert_array_equal(same["image"], s["image"])


def test_one_of_picks_each_option_evenly_and_honours_p():
  from jaxseg.data.transforms import GaussianBlur, GaussianNoise, OneOf
  s = {"image": np.zeros((8, 8, 1), np.float32), "mask": np.zeros((8, 8, 1), np.float32)}
  changed = lambda t, i: not np.all(t.random_map(s, np.random.default_rng(i))["image"] == 0)  # noqa: E731
  # blur of a constant image leaves it constant, noise does not
  both = OneOf((GaussianNoise(), GaussianBlur()), p=1.0)
  assert 160 < sum(changed(both, i) for i in range(400)) < 240
  maybe = OneOf((GaussianNoise(),), p=0.3)
  assert 90 < sum(changed(maybe, i) for i in range(400)) < 150


def test_train_recipe_follows_the_config():
  from jaxseg.config import default_config
  from jaxseg.data.transforms import Elastic, GridDistortion, OneOf, ShiftScaleRotate, train_recipe
  aug = default_config().data.augment
  aug.ssr, aug.elastic_or_grid, aug.noise_or_blur, aug.gamma = 0.85, 0.2, 0.5, 0.1
  names = [type(t).__name__ for t in train_recipe(aug, on_device=False).transforms]
  assert names == ["FlipRot90", "ShiftScaleRotate", "OneOf", "OneOf", "OneOf"]
  warps = train_recipe(aug).transforms[2]
  assert isinstance(warps, OneOf) and warps.p == 0.2
  assert [type(o) for o in warps.options] == [Elastic, GridDistortion]
  # warps and noise / blur move into the jitted step
  names = [type(t).__name__ for t in train_recipe(aug, on_device=True).transforms]
  assert names == ["FlipRot90", "OneOf"] and not any(
      isinstance(t, ShiftScaleRotate) for t in train_recipe(aug, on_device=True).transforms)


def test_clahe_equalises_a_low_contrast_image_per_channel():
  from jaxseg.data.transforms import Preprocess, clahe
  rng = np.random.default_rng(0)
  # A skewed image: after min-max scaling most pixels sit in the lowest tenth of the range.
  image = (rng.exponential(size=(64, 64, 2)) ** 1.5).astype(np.float32)
  low_before = (image[..., 0] / image[..., 0].max() < 0.1).mean()
  out = clahe(image, 2.0, 8)
  assert out.shape == image.shape and out.dtype == np.float32
  assert 0 <= out.min() and out.max() <= 1
  low_after = (out[..., 0] < 0.1).mean()
  assert low_before > 0.8 and low_after < 0.6 * low_before, (low_before, low_after)
  np.testing.assert_array_equal(clahe(np.full((16, 16, 1), 3.0, np.float32), 2.0, 4),
                                clahe(np.full((16, 16, 1), 9.0, np.float32), 2.0, 4))
  # Preprocess applies it before the z-score, train and test alike
  s = {"image": image, "mask": np.zeros((64, 64, 1), np.float32)}
  pre = Preprocess(0, "none", clahe_clip=2.0).map(s)
  np.testing.assert_allclose(pre["image"], out)


def test_gamma_keeps_the_range_and_bends_the_middle():
  from jaxseg.data.transforms import gamma
  image = np.linspace(-2, 3, 101, dtype=np.float32).reshape(101, 1, 1)
  out = gamma(image, np.random.default_rng(1), 0.5)
  assert out.min() == pytest.approx(-2) and out.max() == pytest.approx(3)
  assert np.all(np.diff(out[:, 0, 0]) >= 0) and not np.allclose(out, image)


def test_random_patch_foreground_ratio_and_padding():
  from jaxseg.data.transforms import RandomPatch
  mask = np.zeros((20, 40, 40, 1), np.float32)
  mask[3:5, 30:34, 2:6] = 1  # a small lesion in one corner
  sample = {"image": np.random.default_rng(0).normal(size=(20, 40, 40, 2)).astype(np.float32),
            "mask": mask}
  rng = np.random.default_rng(1)
  always = [RandomPatch((8, 16, 16), 1.0).random_map(sample, rng) for _ in range(30)]
  assert all(p["image"].shape == (8, 16, 16, 2) and p["mask"].any() for p in always)
  never = [RandomPatch((8, 16, 16), 0.0).random_map(sample, rng)["mask"].any() for _ in range(200)]
  # uniform placement rarely covers the lesion: well under the always-foreground rate
  assert np.mean(never) < 0.5
  half = [RandomPatch((8, 16, 16), 0.5).random_map(sample, rng)["mask"].any() for _ in range(400)]
  assert 0.45 < np.mean(half) < 0.5 + 0.5 * np.mean(never) + 0.1
  small = RandomPatch((24, 16, 16), 0.0).random_map(sample, rng)  # deeper than the sample
  assert small["image"].shape == (24, 16, 16, 2) and not small["image"][20:].any()
  # image and mask are cut at the same place
  marked = {"image": mask.repeat(2, -1), "mask": mask}
  p = RandomPatch((8, 16, 16), 1.0).random_map(marked, rng)
  np.testing.assert_array_equal(p["image"][..., :1], p["mask"])
