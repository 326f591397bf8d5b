"""Freezing encoder stages: no update to their parameters and none to their BatchNorm statistics."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxseg import models
from jaxseg.bench import _random_batch
from jaxseg.config import default_config
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


def _config(name, freeze):
  c = default_config()
  c.data.image_size, c.data.batch_size = 64, 2
  c.model.name, c.model.features, c.model.freeze = name, 4, freeze
  c.optim.lr = 1e-2
  return c


@pytest.mark.parametrize("name,freeze,frozen,trained", [
    ("unet_resnet50", "stem,layer1,layer2", ["conv1", "bn1", "layer1_0", "layer2_3"],
     ["layer3_0", "layer4_2"]),
    ("unet_vgg16", "block1,block2", ["features_0", "features_2", "features_5", "features_7"],
     ["features_10", "features_28"]),
])
def test_frozen_stages_stay_bit_identical(name, freeze, frozen, trained):
  exp = Experiment(_config(name, freeze), "")
  state = exp.init_state()
  before = jax.device_get((state.params, state.batch_stats))
  batch, losses = _random_batch(exp), []
  for _ in range(3):  # the same batch: the encoder-UNet family learns it with stages frozen
    acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
    state, acc = exp.train_step(state, batch, acc)
    losses.append(float(acc["loss_sum"]))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  params, stats = jax.device_get((state.params, state.batch_stats))
  for module in frozen:
    jax.tree.map(np.testing.assert_array_equal, before[0]["encoder"][module],
                 params["encoder"][module])
    if module in before[1].get("encoder", {}):
      jax.tree.map(np.testing.assert_array_equal, before[1]["encoder"][module],
                   stats["encoder"][module])
  for module in trained:
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           before[0]["encoder"][module], params["encoder"][module])
    assert all(jax.tree.leaves(changed)), module
  if name == "unet_resnet50":  # trained stages do update their statistics
    assert not np.array_equal(before[1]["encoder"]["layer3_0"]["bn1"]["mean"],
                              stats["encoder"]["layer3_0"]["bn1"]["mean"])
  assert not np.array_equal(before[0]["dec_0"]["ConvNormAct_0"]["Conv_0"]["kernel"],
                            params["dec_0"]["ConvNormAct_0"]["Conv_0"]["kernel"])


def test_freeze_errors():
  tree = {"encoder": {"conv1": {"kernel": 0}}}
  with pytest.raises(ValueError, match="needs an encoder model"):
    models.frozen_mask(ConfigDict({"name": "unet", "freeze": "stem"}), tree)
  with pytest.raises(ValueError, match=r"unknown stages \['layer9'\]"):
    models.frozen_mask(ConfigDict({"name": "unet_resnet50", "freeze": "layer9"}), tree)
