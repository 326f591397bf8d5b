import pytest

from jaxseg.config import default_config
from jaxseg.train.state import learning_rate_schedule, make_optimizer


def test_warmup_cosine_with_floor_and_decay_horizon():
  o = default_config().optim
  o.lr, o.min_lr, o.warmup_steps = 1e-3, 1e-5, 10
  s = learning_rate_schedule(o, total_steps=110)
  assert float(s(0)) == 0.0 and float(s(10)) == pytest.approx(1e-3)
  assert float(s(60)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-4)  # half-way down the cosine
  assert float(s(110)) == pytest.approx(1e-5)
  o.decay_steps = 60  # T_max shorter than training: flat at the floor after it
  s = learning_rate_schedule(o, total_steps=110)
  assert float(s(60)) == pytest.approx(1e-5) and float(s(100)) == pytest.approx(1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_every_optimizer_builds(name):
  o = default_config().optim
  o.name, o.weight_decay, o.grad_clip = name, 1e-4, 1.0
  assert make_optimizer(o, 100) is not None


def test_unknown_optimizer():
  o = default_config().optim
  o.name = "lion"
  with pytest.raises(ValueError, match="optim.name='lion'"):
    make_optimizer(o, 10)


def test_step_schedule_is_torch_steplr_in_steps():
  o = default_config().optim
  o.lr, o.schedule, o.step_every, o.step_gamma = 1e-6, "step", 100, 0.9
  s = learning_rate_schedule(o, total_steps=500)
  assert float(s(0)) == pytest.approx(1e-6) and float(s(99)) == pytest.approx(1e-6)
  assert float(s(100)) == pytest.approx(0.9e-6) and float(s(450)) == pytest.approx(0.9**4 * 1e-6)
  o.warmup_steps = 10
  s = learning_rate_schedule(o, total_steps=500)
  assert float(s(5)) == pytest.approx(0.5e-6) and float(s(110)) == pytest.approx(0.9e-6)
  o.step_every = 0
  with pytest.raises(ValueError, match="step_every"):
    learning_rate_schedule(o, 500)
  o.schedule = "linear"
  with pytest.raises(ValueError, match="optim.schedule='linear'"):
    learning_rate_schedule(o, 500)


def test_constant_schedule():
  o = default_config().optim
  o.lr, o.schedule = 3e-4, "constant"
  s = learning_rate_schedule(o, total_steps=50)
  assert float(s(0)) == float(s(49)) == pytest.approx(3e-4)


def test_he_uniform_redraws_every_kernel_within_its_bound():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxseg.models import reinit_kernels
  params = {"conv": {"kernel": jnp.zeros((3, 3, 3, 8, 64)), "bias": jnp.zeros(64)},
            "dw": {"kernel": jnp.zeros((5, 5, 1, 32))}}
  new = reinit_kernels(params, jax.random.key(0), "he_uniform")
  for name, fan_in in (("conv", 27 * 8), ("dw", 25)):
    k = np.asarray(new[name]["kernel"])
    bound = np.sqrt(6 / fan_in)  # He uniform: U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
    assert np.std(k) == pytest.approx(bound / np.sqrt(3), rel=0.1)
  np.testing.assert_array_equal(new["conv"]["bias"], 0.0)
  assert reinit_kernels(params, jax.random.key(0), "lecun_normal") is params
  with pytest.raises(ValueError, match="model.kernel_init='orthogonal'"):
    reinit_kernels(params, jax.random.key(0), "orthogonal")
