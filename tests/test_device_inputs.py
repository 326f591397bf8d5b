"""The per-image z-score in the jitted step (uint8 images through the loader) gives what the host
z-score gave, and runs only where the host transforms after it cannot change the statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxseg.data import pipeline, transforms
from jaxseg.data.sources.lgg import LGGSource
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


@pytest.mark.parametrize("shape", [(3, 20, 24, 3), (2, 5, 12, 12, 2)])
def test_device_zscore_equals_host_zscore(shape):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, shape).astype(np.uint8)
  images[0, ..., 1] = 7  # a constant channel becomes zeros on both sides
  host = np.stack([transforms.normalize(x.astype(np.float32)) for x in images])
  device = np.asarray(transforms.normalize_device(jnp.asarray(images)))
  assert device.dtype == np.float32
  np.testing.assert_allclose(device, host, atol=2e-5)
  assert not device[0, ..., 1].any()
  nan = transforms.normalize_device(jnp.full((1, 4, 4, 1), jnp.nan))
  assert np.isnan(np.asarray(nan)).all()  # bad input stays visible to train.nan_policy


def test_zscore_goes_to_the_device_only_where_host_transforms_keep_the_statistics(lgg_root):
  c = tiny_config(lgg_root).data
  assert pipeline.zscore_on_device(c)  # flips and 90-degree turns only move pixels
  c.augment.ssr = 0.5  # a zero-filled warp on the host changes them
  assert not pipeline.zscore_on_device(c)
  c.augment.on_device = "device"  # the warp runs in the step, after the device z-score
  assert pipeline.zscore_on_device(c)
  for key, value in [("augment.gamma", 0.3), ("augment.brightness_contrast", 0.3),
                     ("normalize", "none"), ("patch", (16, 16))]:
    other = c.copy_and_resolve_references()
    sub, _, name = key.rpartition(".")
    setattr(other[sub] if sub else other, name, value)
    assert not pipeline.zscore_on_device(other), key


def test_loader_ships_uint8_and_the_step_sees_the_host_normalised_batch(lgg_root):
  c = tiny_config(lgg_root)
  src = LGGSource(lgg_root)
  batch = next(iter(pipeline.train_dataset(src, c.data, seed=0)))
  assert batch["image"].dtype == np.uint8 and batch["mask"].dtype == np.uint8
  assert pipeline.image_dtype(src, c.data) == np.uint8
  on_device = step_lib.device_inputs(jax.tree.map(jnp.asarray, {
      "image": batch["image"], "mask": batch["mask"]}), zscore=True)
  host = np.stack([transforms.normalize(x.astype(np.float32)) for x in batch["image"]])
  np.testing.assert_allclose(np.asarray(on_device["image"]), host, atol=2e-5)
  assert on_device["mask"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(on_device["mask"]), batch["mask"])

  c.data.augment.gamma = 0.5  # host intensity transform: normalised (float32) on the host
  batch = next(iter(pipeline.train_dataset(src, c.data, seed=0)))
  assert batch["image"].dtype == np.float32 and pipeline.image_dtype(src, c.data) == np.float32


def test_train_step_on_uint8_batch_matches_host_normalised_batch(lgg_root, tmp_path):
  c = tiny_config(lgg_root)
  exp = Experiment(c, str(tmp_path))
  assert pipeline.zscore_on_device(c.data)
  rng = np.random.default_rng(1)
  raw = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  mask = (rng.random((4, 32, 32, 1)) < 0.3).astype(np.uint8)
  host = np.stack([transforms.normalize(x.astype(np.float32)) for x in raw])
  acc = step_lib.zero_accumulator(1)
  plain = jax.jit(step_lib.make_train_step(exp.model, exp.tx, "binary", c.loss, 0.5))
  s_host, acc_host = plain(exp.init_state(), {"image": host, "mask": mask.astype(np.float32)},
                           acc)
  s_dev, acc_dev = exp.train_step(exp.init_state(), exp.to_device({"image": raw, "mask": mask}),
                                  acc)
  np.testing.assert_allclose(acc_dev["loss_sum"], acc_host["loss_sum"], rtol=1e-5)
  np.testing.assert_array_equal(acc_dev["counts"], acc_host["counts"])
  for a, b in zip(jax.tree.leaves(s_dev.params), jax.tree.leaves(s_host.params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_augment_on_device_auto_is_the_device_off_cpus(lgg_root, monkeypatch):
  aug = tiny_config(lgg_root).data.augment
  assert aug.on_device == "auto" and not pipeline.augment_on_device(aug)  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert pipeline.augment_on_device(aug)
  aug.on_device = "host"
  assert not pipeline.augment_on_device(aug)
  aug.on_device = "gpu"
  with pytest.raises(ValueError, match="auto, device, host"):
    pipeline.augment_on_device(aug)


def test_one_image_dtype_per_training_stream():
  from jaxseg.errors import DataError
  sample = {"image": np.zeros((8, 8, 3), np.uint16), "mask": np.zeros((8, 8, 1), np.uint8),
            "case_id": "TCGA_X", "slice": 7}
  strict = transforms.Preprocess(8, zscore_on_device=True, batch_dtype="uint8")
  with pytest.raises(DataError, match="case TCGA_X, slice 7: a uint16 image"):
    strict.map(sample)
  loose = transforms.Preprocess(8, zscore_on_device=True, batch_dtype="float32")
  assert loose.map({**sample, "image": np.zeros((8, 8, 3), np.uint8)})["image"].dtype == np.float32


def test_clahe_stream_ships_its_8_bit_output_whose_device_zscore_is_the_hosts(tmp_path):
  from jaxseg.config import default_config
  from jaxseg.data import builtin
  from jaxseg.data.sources.gi import GISource
  c = default_config().data
  c.source, c.image_size, c.batch_size, c.in_channels = "gi", 24, 4, 3
  c.num_classes, c.task, c.clahe_clip = 3, "multilabel", 2.0
  c.augment.ssr, c.augment.noise_or_blur = 0.5, 0.5  # the GI recipe's warps and noise ...
  c.augment.on_device = "device"  # ... in the step, after its z-score (the default on GPUs)
  src = GISource(builtin.resolve_root("synthetic:2:32:4", str(tmp_path), "gi"), in_channels=3)
  assert pipeline.zscore_on_device(c) and pipeline.image_dtype(src, c) == np.uint8
  batch = next(iter(pipeline.train_dataset(src, c, seed=0)))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 24, 24, 3)
  assert batch["image"].max() == 255  # CLAHE's 0-255 range, not [0, 1] truncated to 0 / 1

  # Per sample: uint8 through the loader and the device z-score = the host's float32 CLAHE then
  # z-score (what the GI pipeline does with its augmentation on the host).
  host_prep = transforms.Preprocess(24, "zscore", clahe_clip=2.0)
  device_prep = transforms.Preprocess(24, "zscore", clahe_clip=2.0, zscore_on_device=True,
                                      batch_dtype="uint8")
  samples = [src[i] for i in range(3)]
  host = np.stack([host_prep.map(s)["image"] for s in samples])
  shipped = np.stack([device_prep.map(s)["image"] for s in samples])
  assert host.dtype == np.float32 and shipped.dtype == np.uint8
  np.testing.assert_allclose(np.asarray(transforms.normalize_device(jnp.asarray(shipped))), host,
                             atol=2e-5)
  # Left un-normalised (normalize="none"), CLAHE stays in [0, 1] float32 as before.
  raw = transforms.Preprocess(24, "none", clahe_clip=2.0, zscore_on_device=True).map(samples[0])
  assert raw["image"].dtype == np.float32 and raw["image"].max() == 1.0
