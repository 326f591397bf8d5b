"""Per-case evaluation, flip TTA, checkpoint ensembles and sliding windows."""

import csv
import json

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_config
from test_decathlon_source import write_decathlon

from jaxseg.data.sources.decathlon import DecathlonSource
from jaxseg.evaluation import CaseEvaluator
from jaxseg.inference import flip_sets, make_probabilities, sliding_window, window_starts
from jaxseg.train.loop import train_and_evaluate


def test_flip_tta_averages_the_flipped_predictions():
  # A position-dependent "model" (cumulative sum along W): flipping changes its answer, so the
  # TTA mean differs from the plain prediction in a way computed here by hand.
  predict = lambda state, x: jnp.cumsum(x, axis=2) * state  # noqa: E731
  x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
  plain = np.cumsum(x, axis=2)
  wflip = np.flip(np.cumsum(np.flip(x, 2), axis=2), 2)  # flip W, predict, flip back
  # Flipping H commutes with a sum along W, so the four passes are plain, plain, wflip, wflip.
  expected = (plain + wflip) / 2
  got = make_probabilities(predict, tta=True)([1.0], jnp.asarray(x))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Two "checkpoints" (scales 1 and 3) average to scale 2.
  got = make_probabilities(predict, tta=False)([1.0, 3.0], jnp.asarray(x))
  np.testing.assert_allclose(got, 2 * plain, rtol=1e-6)
  assert len(flip_sets(2)) == 4 and len(flip_sets(3)) == 8


def test_sliding_window_equals_a_whole_image_pass_for_a_per_pixel_model():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(11, 37, 29, 2)).astype(np.float32)  # no side a multiple of the patch
  calls = []

  def predict_batch(batch):
    assert batch.shape == (3, 8, 16, 16, 2)  # always the patch shape, padded to the batch
    calls.append(1)
    return 1 / (1 + np.exp(-(batch[..., :1] - batch[..., 1:])))

  got = sliding_window(predict_batch, image, (8, 16, 16), overlap=0.5, batch_size=3)
  want = 1 / (1 + np.exp(-(image[..., :1] - image[..., 1:])))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert window_starts(37, 16, 0.5) == [0, 8, 16, 21]
  assert window_starts(8, 16, 0.5) == [0]
  # smaller than the patch: zero-padded, cropped back
  small = sliding_window(predict_batch, image[:5, :9, :9], (8, 16, 16), batch_size=3)
  assert small.shape == (5, 9, 9, 1)


def test_per_case_scores_agree_with_the_training_evaluation(lgg_root, tmp_path):
  c = tiny_config(lgg_root)
  c.train.steps, c.train.eval_every = 30, 15
  result = train_and_evaluate(c, str(tmp_path))
  out = CaseEvaluator(c, str(tmp_path), "val").run()
  # The volume Dice of a patient is the Dice of its summed slice counts: the training loop's
  # per-case figure, from a different code path.
  assert set(out["cases"]) == set(result["cases"])
  for case, per_class in out["cases"].items():
    assert per_class[0]["dice"] == pytest.approx(result["cases"][case], abs=1e-6)
    assert set(per_class[0]) == {"dice", "iou", "precision", "recall", "hd95"}
  assert out["classes"] == ["tumour"] and out["summary"]["num_cases"] == len(result["cases"])
  with open(tmp_path / "eval_val_cases.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(out["cases"]) and rows[0]["class"] == "tumour"
  assert json.loads((tmp_path / "eval_val_cases.json").read_text())["summary"]

  both = CaseEvaluator(c, str(tmp_path), "val", checkpoints=["15", "30"], tta=True).run(False)
  assert both["checkpoints"] == ["15", "30"] and both["tta"]
  same = CaseEvaluator(c, str(tmp_path), "val", checkpoints=["30", f"{tmp_path}:30"]).run(False)
  for case in out["cases"]:  # an ensemble of one checkpoint twice is that checkpoint
    assert same["cases"][case][0]["dice"] == pytest.approx(out["cases"][case][0]["dice"])

  c.data.sample_cache = str(tmp_path / "samples")  # written by the first run, read by the second
  for _ in range(2):
    cached = CaseEvaluator(c, str(tmp_path), "val").run(False)
    assert cached["cases"] == out["cases"]
  assert list((tmp_path / "samples").glob("*/*.npz"))


def test_decathlon_volumes_carry_header_spacing(tmp_path):
  root = write_decathlon(tmp_path / "brats", n=2)
  for path in (tmp_path / "brats" / "imagesTr").iterdir():  # re-save with 1 x 1.5 x 2 mm voxels
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([1.0, 1.5, 2.0, 1.0])), path)
  vols = DecathlonSource(root, str(tmp_path / "cache"), downsample=2, depth=5).scored_volumes()
  assert [v.indices for v in vols] == [(0,), (1,)]
  assert vols[0].spacing == (4.0, 3.0, 2.0)  # array order Z, Y, X, times the down-sampling
  slices = DecathlonSource(root, str(tmp_path / "cache2")).scored_volumes(image_size=10)
  assert slices[1].indices == tuple(range(10, 20))  # Z = 10 slices per volume
  assert slices[1].spacing == pytest.approx((2.0, 1.5 * 20 / 10, 1.0 * 24 / 10))


def test_3d_patch_training_then_sliding_window_per_case_scores(tmp_path):
  from jaxseg.config import default_config
  c = default_config()
  c.data.source, c.data.root = "decathlon", "synthetic:4:32:16"
  c.data.depth, c.data.image_size, c.data.in_channels = 16, 32, 4
  c.data.num_classes, c.data.task, c.data.normalize = 4, "multiclass", "none"
  c.data.patch, c.data.patch_foreground = (8, 16, 16), 0.5
  c.data.batch_size, c.data.eval_batch_size = 2, 1
  c.data.split.val, c.data.split.test = 0.25, 0.25
  c.model.name, c.model.features, c.model.depth, c.model.norm = "unet3d", 4, 2, "group"
  c.train.steps, c.train.eval_every = 4, 4
  train_and_evaluate(c, str(tmp_path))
  ev = CaseEvaluator(c, str(tmp_path), "test", overlap=0.5)
  assert ev.exp.input_shape == (8, 16, 16, 4)
  image, truth, probs = ev.predict(ev.volumes[0])
  assert image.shape == (16, 32, 32, 4) and probs.shape == (16, 32, 32, 4)  # whole volume
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # windows blend probabilities
  out = ev.run(write=False)
  assert out["classes"] == ["edema", "non-enhancing tumor", "enhancing tumour"]
  assert all(len(v) == 3 for v in out["cases"].values())
