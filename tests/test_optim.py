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
