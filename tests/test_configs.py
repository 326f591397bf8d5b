"""Every experiment config in configs/ builds its model and runs one train step on fixture data
in its dataset's format (shrunk to test size: image side, batch, widths)."""

import glob
import importlib.util
import os

import jax
import pytest

from jaxseg.data import pipeline
from jaxseg.models.encoders import EfficientNetB3Encoder, ResNet50Encoder
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "[a-z]*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_config_is_covered():
  names = {os.path.basename(p)[:-3] for p in CONFIGS}
  assert {"demo", "lgg_unet", "lgg_unet_vgg16", "lgg_unet_resnet50",
          "lgg_unet_resnet50_frozen2", "lgg_resunet", "lgg_unext", "gi_cnn_scratch", "gi_unetpp_effb3",
          "brats_2d", "brats_3d", "lgg_unet_bn_study"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_config_builds_and_steps(path, lgg_root, tmp_path, monkeypatch):
  # Encoders one block deep per stage: every stage and name the config refers to (its frozen
  # stages), a fraction of the compile. Full depth is checked against torch in test_pretrained.
  monkeypatch.setattr(ResNet50Encoder, "LAYERS", (1, 1, 1, 1))
  monkeypatch.setattr(EfficientNetB3Encoder, "DEPTH", 0.01)
  module = _load(path)
  c = module.get_config()
  assert module.__doc__ and "jaxseg train" in module.__doc__  # the command that runs it
  if hasattr(module, "sweep"):
    for point in module.sweep():
      for key in point:  # every swept key exists in the config
        node = c
        for part in key.split("."):
          node = node[part]
  if c.data.source == "gi":
    from test_gi_source import LABELS, _write_gi
    c.data.root = _write_gi(tmp_path / "gi", labels=LABELS)
    c.data.split.val = c.data.split.test = 0.0  # the fixture has two cases
  elif c.data.source == "decathlon":
    from test_decathlon_source import write_decathlon
    c.data.root = write_decathlon(tmp_path / "brats", n=4)
    c.data.split.val = c.data.split.test = 0.25
    c.data.crop = (16, 32, 32)  # 16 slices: the 3-D UNet's four levels halve it to 1
    c.data.depth = 16 if c.data.depth else 0
  else:
    c.data.root = lgg_root
  c.data.image_size = 32 if c.data.source == "decathlon" else 64
  c.data.batch_size = 2
  c.data.num_workers = 0
  if c.model.name not in ("unext", "unet_vgg16", "unet_resnet50"):
    c.model.features = 4
  exp = Experiment(c, str(tmp_path))
  source = exp.sources()["train"]
  batch, _ = pipeline.split_host(next(iter(pipeline.train_dataset(source, c.data, 0))))
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(c.data.num_classes), exp.replicated)
  state, acc = exp.train_step(state, exp.to_device(batch), acc)
  assert int(state.step) == 1 and bool(jax.numpy.isfinite(acc["loss_sum"]))
