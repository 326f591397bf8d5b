import jax
import jax.numpy as jnp
import pytest
from ml_collections import ConfigDict

from jaxseg import models
from jaxseg.config import default_config


def _unet_cfg(**kw):
  c = default_config().model
  c.update(kw)
  return c


def test_classic_unet_has_buda_parameter_count():
  m = models.build(_unet_cfg(), in_channels=3, out_channels=1)
  v = models.variable_shapes(m, (64, 64, 3))
  assert models.count_params(v["params"]) == 7_763_041


@pytest.mark.parametrize("size,depth", [(32, 2), (48, 3), (64, 4)])
def test_unet_output_shape_is_logits_per_pixel(size, depth):
  m = models.build(_unet_cfg(features=4, depth=depth), in_channels=2, out_channels=3)
  v = models.init_variables(m, (size, size, 2))
  out = jax.jit(lambda v, x: m.apply(v, x, train=False))(v, jnp.ones((2, size, size, 2)))
  assert out.shape == (2, size, size, 3) and out.dtype == jnp.float32


def test_batch_norm_off_removes_stats_and_adds_conv_bias():
  on = models.variable_shapes(models.build(_unet_cfg(features=4, depth=2), 1, 1), (16, 16, 1))
  off = models.variable_shapes(
      models.build(_unet_cfg(features=4, depth=2, batch_norm=False), 1, 1), (16, 16, 1))
  assert "batch_stats" in on and "batch_stats" not in off
  # Each of the 10 convs swaps BN scale+bias (2F) for a conv bias (F).
  n_on, n_off = models.count_params(on["params"]), models.count_params(off["params"])
  feats = [4, 4, 8, 8, 16, 16, 8, 8, 4, 4]
  assert n_on - n_off == sum(feats)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  m = models.build(_unet_cfg(features=4, depth=2, dtype="bfloat16"), 3, 1)
  v = models.init_variables(m, (16, 16, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  out = jax.jit(lambda v, x: m.apply(v, x, train=False))(v, jnp.ones((1, 16, 16, 3)))
  assert out.dtype == jnp.float32


def test_flops_reported_and_unknown_model_rejected():
  m = models.build(_unet_cfg(features=4, depth=2), 3, 1)
  v = models.init_variables(m, (32, 32, 3))
  assert models.forward_flops(m, v, (32, 32, 3)) > 1e6
  with pytest.raises(ValueError, match="model.name='nope'"):
    models.build(ConfigDict({"name": "nope"}), 3, 1)
