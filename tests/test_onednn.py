"""model.conv_impl=onednn: oneDNN's 3x3 convolutions under XLA (jaxseg.models.onednn)."""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import conv, onednn

SAME = ((1, 1), (1, 1))


@pytest.fixture(scope="module")
def built():
  try:
    return onednn.build()
  except onednn.Unavailable as e:  # no C++ compiler or no oneDNN package on this machine
    pytest.skip(str(e))


def _loss(op, strides=(1, 1), padding=SAME):
  return lambda x, w: (op(x, w, strides, padding) ** 2).sum()


def _ours(x, w, strides, padding):
  return onednn.conv(x, w, strides, padding, conv.conv_nd)


@pytest.mark.parametrize("shape,cout", [((2, 16, 16, 8), 4), ((1, 7, 5, 3), 16),
                                        ((3, 12, 10, 32), 24)])
def test_onednn_convolution_and_gradients_equal_xla(built, shape, cout):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout))
  assert onednn.applies(x, w, (1, 1), SAME)
  np.testing.assert_allclose(jax.jit(_ours, static_argnums=(2, 3))(x, w, (1, 1), SAME),
                             conv.conv_nd(x, w, (1, 1), SAME), rtol=1e-5, atol=1e-5)
  ours = jax.jit(jax.grad(_loss(_ours), (0, 1)))(x, w)
  ref = jax.grad(_loss(conv.conv_nd), (0, 1))(x, w)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("kernel,strides,padding,dtype", [
    (3, (2, 2), ((1, 1), (1, 1)), jnp.float32),  # strided
    (1, (1, 1), ((0, 0), (0, 0)), jnp.float32),  # 1x1
    (3, (1, 1), ((1, 1), (1, 1)), jnp.bfloat16),  # not float32
])
def test_convolutions_onednn_does_not_take_stay_xla(kernel, strides, padding, dtype):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 4, 6)).astype(dtype)
  assert not onednn.applies(x, w, strides, padding)
  np.testing.assert_array_equal(_ours(x, w, strides, padding),
                                conv.conv_nd(x, w, strides, padding))


@pytest.mark.parametrize("name", ["unet", "unext"])
def test_models_with_onednn_keep_parameters_and_gradients(built, name):
  from jaxseg.config import default_config
  from jaxseg.models import build, init_variables
  grads, trees = {}, {}
  for impl in ("xla", "onednn"):
    c = default_config()
    c.model.name, c.model.features, c.model.conv_impl = name, 4, impl
    model = build(c.model, 3, 1)
    v = init_variables(model, (32, 32, 3))
    trees[impl] = jax.tree.map(lambda a: (a.shape, a.dtype), v)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))

    def loss(params, model=model, v=v, x=x):
      y, _ = model.apply({**v, "params": params}, x, train=True, mutable=["batch_stats"])
      return (y ** 2).mean()
    grads[impl] = jax.jit(jax.grad(loss))(v["params"])
  assert trees["xla"] == trees["onednn"]  # the same checkpoints either way
  # One scale for all leaves: the conv biases before a batch norm get gradients of float noise
  # (their true gradient is 0), which a per-leaf relative tolerance would compare as signal.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads["xla"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
               grads["onednn"], grads["xla"])


def test_missing_pieces_are_named(monkeypatch):
  monkeypatch.setattr(onednn.shutil, "which", lambda name: None)
  with pytest.raises(onednn.Unavailable, match="no C\\+\\+ compiler"):
    onednn.build()
  monkeypatch.setattr(onednn.shutil, "which", lambda name: "/usr/bin/c++")

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(onednn.importlib.metadata, "distribution", missing)
  with pytest.raises(onednn.Unavailable, match=r"onednn-devel-cpu-gomp .*jaxseg\[onednn\]"):
    onednn.build()
