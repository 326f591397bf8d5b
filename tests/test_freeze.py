"""Freezing encoder stages: no update to their parameters and none to their BatchNorm statistics."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxseg import models
from jaxseg.bench import _random_batch
from jaxseg.config import default_config
from jaxseg.models.encoders import ResNet50Encoder
from jaxseg.train import step as step_lib
from jaxseg.train.experiment import Experiment


def _shorten_resnet(monkeypatch):
  # layer1 and layer2 at full depth (the frozen prefix), one block in layer3 and layer4: the
  # same frozen / trained boundary, 9 bottlenecks to compile instead of 16.
  monkeypatch.setattr(ResNet50Encoder, "LAYERS", (3, 4, 1, 1))


def _config(name, freeze):
  c = default_config()
  c.data.image_size, c.data.batch_size = 64, 2
  c.model.name, c.model.features, c.model.freeze = name, 4, freeze
  c.optim.lr = 1e-2
  return c


@pytest.mark.parametrize("name,freeze,frozen,trained", [
    ("unet_resnet50", "stem,layer1,layer2", ["conv1", "bn1", "layer1_0", "layer2_3"],
     ["layer3_0", "layer4_0"]),
    ("unet_vgg16", "block1,block2", ["features_0", "features_2", "features_5", "features_7"],
     ["features_10", "features_28"]),
])
def test_frozen_stages_stay_bit_identical(name, freeze, frozen, trained, monkeypatch):
  _shorten_resnet(monkeypatch)
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


def test_frozen_stages_leave_their_gradients_out_of_the_step(monkeypatch):
  """The frozen prefix's convolutions get no weight gradient and, being a prefix, no input
  gradient (the stem's input, the image, never takes one), nor do layer3's first block's two
  convolutions on layer2's output (its conv1 and downsample), which have nothing trainable
  before them: 24 + 23 + 2 convolutions fewer in the lowered step. The trained layers' update
  is the same."""
  def lowered_convolutions_and_update(freeze):
    c = _config("unet_resnet50", freeze)
    c.model.conv_impl = "xla"  # convolutions as XLA ops on every machine, to count them
    exp = Experiment(c, "")
    state = exp.init_state()
    batch = _random_batch(exp)
    acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
    lowered = exp.train_step.lower(state, batch, acc)  # traced once, counted, then run
    new_state, _ = lowered.compile()(state, batch, acc)
    hlo = lowered.as_text()
    return hlo.count("stablehlo.convolution"), jax.device_get(new_state.params), exp

  _shorten_resnet(monkeypatch)
  all_convs, trained_all, _ = lowered_convolutions_and_update("")
  frozen_convs, trained_frozen, exp = lowered_convolutions_and_update("stem,layer1,layer2")
  mask = models.frozen_mask(exp.config.model, trained_frozen)
  frozen_kernels = sum(frozen and name[-1].key == "kernel"
                       for name, frozen in jax.tree_util.tree_leaves_with_path(mask))
  assert frozen_kernels == 24  # stem 1, layer1 3 x 3 + 1, layer2 4 x 3 + 1
  assert all_convs - frozen_convs == frozen_kernels + (frozen_kernels - 1) + 2, (all_convs,
                                                                                frozen_convs)
  # Same update for what trains (Adam from the same state, same batch).
  trained = jax.tree.map(lambda frozen, a, b: None if frozen else (a, b), mask,
                         trained_all, trained_frozen)
  for a, b in jax.tree.leaves(trained, is_leaf=lambda x: isinstance(x, tuple)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_backward_flops_are_the_gradients_left_out():
  """VGG16 with blocks 1-2 frozen at 64 px: no weight gradient for their four convolutions, no
  input gradient for the three after the first (the image never takes one) nor for block 3's
  first, which has nothing trainable before it. The decoder's gradients stay."""
  exp = Experiment(_config("unet_vgg16", "block1,block2"), "")
  shapes = models.variable_shapes(exp.model, exp.input_shape)
  conv = lambda size, cin, cout: 2 * size * size * 9 * cin * cout  # noqa: E731
  block12 = [conv(64, 3, 64), conv(64, 64, 64), conv(32, 64, 128), conv(32, 128, 128)]
  expected = sum(block12) + sum(block12[1:]) + conv(16, 128, 256)
  assert models.frozen_backward_flops(exp.model, shapes, exp.input_shape,
                                      exp.frozen_params) == expected
  trained = Experiment(_config("unet_vgg16", ""), "")
  assert models.frozen_backward_flops(trained.model, shapes, trained.input_shape,
                                      trained.frozen_params) == 0
