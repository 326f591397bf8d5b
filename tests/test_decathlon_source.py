"""Decathlon Task01 / BraTS reader on small 4-D NIfTI files written in the real layout."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from jaxseg.config import default_config
from jaxseg.data import pipeline
from jaxseg.data.sources.decathlon import DecathlonSource, preprocess
from jaxseg.errors import DataError

X, Y, Z = 24, 20, 10
MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def write_decathlon(root, n=3, classes=((1, 2, 3), (1,), (1, 3))):
  rng = np.random.default_rng(0)
  (root / "imagesTr").mkdir(parents=True)
  (root / "labelsTr").mkdir()
  training = []
  for i in range(n):
    name = f"BRATS_{i + 1:03d}.nii.gz"
    brain = np.zeros((X, Y, Z), bool)
    brain[4:20, 3:17, 1:9] = True
    image = (rng.normal(100, 20, (X, Y, Z, 4)) * brain[..., None]).astype(np.float32)
    label = np.zeros((X, Y, Z), np.uint8)
    for k, c in enumerate(classes[i % len(classes)]):
      label[8 + 2 * k:11 + 2 * k, 6:10, 3:7] = c
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / name)
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / name)
    training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
  (root / "dataset.json").write_text(json.dumps(
      {"name": "BrainTumour", "modality": MODALITIES, "labels": LABELS, "training": training}))
  return str(root)


def test_volumes_are_cropped_downsampled_and_normalised_on_brain_voxels(tmp_path):
  root = write_decathlon(tmp_path / "d")
  src = DecathlonSource(root, str(tmp_path / "cache"), crop=(8, 16, 16), downsample=2, depth=4)
  assert len(src) == 3 and src.case_ids() == ["BRATS_001", "BRATS_002", "BRATS_003"]
  s = src[0]
  assert s["image"].shape == (4, 8, 8, 4) and s["mask"].shape == (4, 8, 8, 1)
  assert set(np.unique(s["mask"])) <= {0, 1, 2, 3} and s["mask"].max() > 0
  brain = np.abs(s["image"]).sum(-1) > 0
  np.testing.assert_allclose(s["image"][brain].mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(s["image"][brain].std(0), 1, atol=1e-3)
  assert len(os.listdir(tmp_path / "cache")) == 2  # preprocessed once, then memory-mapped


def test_axial_slices_with_chosen_modalities(tmp_path):
  root = write_decathlon(tmp_path / "d")
  vols = DecathlonSource(root, str(tmp_path / "c"), crop=(8, 16, 16), depth=8)
  slices = DecathlonSource(root, str(tmp_path / "c"), crop=(8, 16, 16), modalities=(0, 2))
  assert len(slices) == 3 * 8
  s = slices[8 + 5]  # volume 1, slice 5
  assert s["image"].shape == (16, 16, 2) and s["mask"].shape == (16, 16, 1)
  np.testing.assert_array_equal(s["image"], vols[1]["image"][5][..., [0, 2]])
  np.testing.assert_array_equal(s["mask"], vols[1]["mask"][5])


def test_preprocess_orients_axial_first():
  image = np.zeros((X, Y, Z, 1), np.float32)
  image[1, 2, 3, 0] = 5.0
  label = np.zeros((X, Y, Z), np.uint8)
  label[1, 2, 3] = 2
  img, lab = preprocess(image, label, (), 1)
  assert img.shape == (Z, Y, X, 1) and lab[3, 2, 1] == 2


def test_stratification_key_is_the_set_of_tumour_classes(tmp_path):
  src = DecathlonSource(write_decathlon(tmp_path / "d"), str(tmp_path / "c"), depth=Z)
  assert src.case_strata() == {"BRATS_001": 0b1110, "BRATS_002": 0b0010, "BRATS_003": 0b1010}


def _break(root, which, array):
  nib.save(nib.Nifti1Image(array, np.eye(4)), os.path.join(root, which, "BRATS_002.nii.gz"))


@pytest.mark.parametrize("which,array,match", [
    ("labelsTr", np.full((X, Y, Z), 5, np.uint8), r"label values \[5\] outside the declared"),
    ("labelsTr", np.zeros((X, Y, Z + 1), np.uint8), r"label shape \(24, 20, 11\) does not match"),
    ("imagesTr", np.zeros((X, Y, Z, 3), np.float32), r"expected X x Y x Z x 4"),
])
def test_bad_volumes_name_the_file(tmp_path, which, array, match):
  root = write_decathlon(tmp_path / "d")
  _break(root, which, array)
  src = DecathlonSource(root, str(tmp_path / "c"), depth=Z)
  with pytest.raises(DataError, match=rf"{which}/BRATS_002.nii.gz: {match}"):
    src[1]


def test_corrupt_nifti_and_missing_file(tmp_path):
  root = write_decathlon(tmp_path / "d")
  with open(os.path.join(root, "imagesTr", "BRATS_003.nii.gz"), "wb") as f:
    f.write(b"\x1f\x8b not really gzip")
  with pytest.raises(DataError, match=r"BRATS_003.nii.gz: unreadable NIfTI"):
    DecathlonSource(root, str(tmp_path / "c"), depth=Z)[2]
  os.remove(os.path.join(root, "labelsTr", "BRATS_001.nii.gz"))
  with pytest.raises(DataError, match=r"dataset.json: training\[0\] names .*BRATS_001.nii.gz"):
    DecathlonSource(root, str(tmp_path / "c"))


def test_volume_batches_through_the_pipeline(tmp_path):
  c = default_config().data
  c.source, c.root, c.task, c.num_classes, c.in_channels = "decathlon", "", "multiclass", 4, 4
  c.root = write_decathlon(tmp_path / "d")
  c.crop, c.depth, c.image_size, c.batch_size, c.normalize = (8, 16, 16), 8, 16, 2, "none"
  src = pipeline.build_source(c, str(tmp_path / "run"))
  batch = next(iter(pipeline.train_dataset(src, c, seed=0)))
  assert batch["image"].shape == (2, 8, 16, 16, 4) and batch["mask"].shape == (2, 8, 16, 16, 1)
  assert os.path.isdir(tmp_path / "run" / "preprocessed")


def test_balanced_weights_per_slice_and_per_volume(tmp_path):
  root = write_decathlon(tmp_path / "d")
  vols = DecathlonSource(root, str(tmp_path / "c"), depth=Z)
  np.testing.assert_allclose(vols.sample_weights(), [1.0, 1.0, 1.0])  # three distinct sets
  slices = DecathlonSource(root, str(tmp_path / "c"))
  w = slices.sample_weights()
  assert len(w) == len(slices)
  # background-only slices (most of them) share one key and so one unit of total weight
  keys = [int(slices[i]["mask"].max() > 0) for i in range(len(slices))]
  assert w[np.array(keys) == 0].sum() == pytest.approx(1.0)


def test_crop_to_brain_centres_the_brain_box():
  from jaxseg.data.sources.decathlon import brain_box
  image = np.zeros((X, Y, Z, 4), np.float32)
  image[1:9, 2:12, 5:9] = np.random.default_rng(0).uniform(1, 2, (8, 10, 4, 4))  # off-centre
  label = np.zeros((X, Y, Z), np.uint8)
  label[3, 4, 6] = 2
  img, lab = preprocess(image, label, crop=(6, 12, 10), factor=1, to_brain=True)
  assert img.shape == (6, 12, 10, 4)
  # Z, Y, X box of 4 x 10 x 8 padded to 6 x 12 x 10: one voxel of zeros on each side
  assert brain_box(img) == (slice(1, 5), slice(1, 11), slice(1, 9))
  assert lab[1 + 6 - 5, 1 + 4 - 2, 1 + 3 - 1] == 2  # the label moved with the image
  plain, _ = preprocess(image, label, crop=(6, 12, 10), factor=1)
  assert brain_box(plain) != brain_box(img)  # a centre crop cuts the off-centre brain
  with pytest.raises(ValueError, match="crop_to_brain needs data.crop"):
    DecathlonSource("/nonexistent", "/tmp", crop_to_brain=True)
