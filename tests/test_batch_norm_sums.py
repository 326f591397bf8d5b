"""The native per-channel sums on CPUs (jaxseg/native/batch_norm_sums.cc through
jaxseg.models.native_sums), in batch norm and in the bias gradient (conv.add_bias): the same
statistics and gradients as XLA's reductions, one pass, under a sharded batch too, and XLA's
reductions where the library cannot be built."""

import functools
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import batch_norm, native, native_sums
from jaxseg.models.conv import add_bias


@pytest.fixture(scope="module")
def usable():
  if not native_sums.native_sums_usable():  # no C++ compiler on this machine
    pytest.skip("the native batch-norm sums cannot be built here")


def _gradients(z, scale, bias, act, cot):
  """The fused op's outputs and its gradients with respect to (z, scale, bias)."""
  def loss(z, scale, bias):
    y, mean, var = batch_norm.batch_norm_act(z, scale, bias, 1e-5, act)
    return (y * cot).sum(), (mean, var)
  (_, stats), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(z, scale, bias)
  return stats, grads


def _lowered(z, scale, bias, act):
  return jax.jit(jax.grad(lambda z, s, b: batch_norm.batch_norm_act(z, s, b, 1e-5, act)[0].sum(),
                          (0, 1, 2))).lower(z, scale, bias).as_text()


@pytest.mark.parametrize("act", [None, "relu", "silu"])
@pytest.mark.parametrize("shape", [(4, 9, 7, 5), (2, 3, 8, 6, 16), (3, 16, 16, 64)])
def test_native_sums_equal_xla_reductions(usable, monkeypatch, act, shape):
  """Statistics and the three gradients, with scales of both signs (a negative one flips the
  ReLU's mask), 2-D and 3-D inputs and a channel count that is no multiple of the vector width,
  against the same op on XLA's reductions."""
  z = 3 * jax.random.normal(jax.random.key(0), shape) + 2
  c = shape[-1]
  scale, bias = jnp.linspace(-1.5, 2.0, c), jnp.linspace(-0.3, 0.4, c)
  cot = jax.random.normal(jax.random.key(1), shape)
  text = _lowered(z, scale, bias, act)
  assert "jaxseg_BatchNormStats" in text and "jaxseg_BatchNormGradientSums" in text
  native_result = _gradients(z, scale, bias, act, cot)
  monkeypatch.setattr(native_sums, "native_sums_usable", lambda: False)
  assert "jaxseg_BatchNorm" not in _lowered(z, scale, bias, act)
  xla_result = _gradients(z, scale, bias, act, cot)
  for a, b in zip(jax.tree.leaves(native_result), jax.tree.leaves(xla_result), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_bfloat16_inputs_take_the_native_sums_too(usable, monkeypatch, act):
  """bfloat16 inputs (model.dtype=bfloat16) go to the ...BF16 handlers, which sum their values
  in float32 as XLA's reductions do after the cast: the float32 statistics and weight gradients
  equal XLA's, the bfloat16 input gradient within one bfloat16 step."""
  shape = (3, 16, 16, 24)
  z = (3 * jax.random.normal(jax.random.key(0), shape) + 2).astype(jnp.bfloat16)
  scale, bias = jnp.linspace(-1.5, 2.0, 24), jnp.linspace(-0.3, 0.4, 24)
  cot = jax.random.normal(jax.random.key(1), shape).astype(jnp.bfloat16)
  text = _lowered(z, scale, bias, act)
  assert "jaxseg_BatchNormStatsBF16" in text and "jaxseg_BatchNormGradientSumsBF16" in text
  (stats, grads) = _gradients(z, scale, bias, act, cot)
  monkeypatch.setattr(native_sums, "native_sums_usable", lambda: False)
  assert "jaxseg_BatchNorm" not in _lowered(z, scale, bias, act)
  stats_ref, grads_ref = _gradients(z, scale, bias, act, cot)
  for a, b in zip((*stats, *grads[1:]), (*stats_ref, *grads_ref[1:]), strict=True):
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
  assert grads[0].dtype == jnp.bfloat16
  dz, dz_ref = np.asarray(grads[0], np.float32), np.asarray(grads_ref[0], np.float32)
  np.testing.assert_allclose(dz, dz_ref, rtol=2 ** -7, atol=2 ** -7 * np.abs(dz_ref).max())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("channels", [1, 24])
def test_bias_gradient_is_the_channel_sums(usable, monkeypatch, dtype, channels):
  """add_bias's gradients: the output gradient itself, and its float32 sum per channel, native
  (a stats call) for bfloat16 where the channels fill a vector, else XLA's reduction."""
  y = jax.random.normal(jax.random.key(0), (3, 10, 12, channels)).astype(dtype)
  bias = jnp.linspace(-1.0, 1.0, channels)
  cot = (3 * jax.random.normal(jax.random.key(1), y.shape) + 1).astype(dtype)

  def grads():  # a fresh function each time, so that jit traces it again after the patch
    def outputs_and_vjp(y, bias):
      out, vjp = jax.vjp(add_bias, y, bias)
      return out, *vjp(cot)
    return jax.jit(outputs_and_vjp)
  out, g_y, g_bias = grads()(y, bias)
  assert out.dtype == dtype and g_y.dtype == dtype and g_bias.dtype == jnp.float32
  np.testing.assert_array_equal(out, y + bias.astype(dtype))
  np.testing.assert_array_equal(g_y, cot)
  expected = np.asarray(cot, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(g_bias, expected, rtol=1e-5, atol=1e-4)
  native = dtype == jnp.bfloat16 and channels >= 8
  assert ("jaxseg_BatchNormStats" in grads().lower(y, bias).as_text()) == native
  monkeypatch.setattr(native_sums, "native_sums_usable", lambda: False)
  assert "jaxseg_BatchNorm" not in grads().lower(y, bias).as_text()
  np.testing.assert_allclose(grads()(y, bias)[2], expected, rtol=1e-5, atol=1e-4)


def test_native_sums_are_accurate_over_many_rows(usable):
  """A million rows per channel, far from zero mean: the statistics and the weight gradients
  against float64 sums (each block of rows is summed in float32, the blocks in double)."""
  z = jax.random.normal(jax.random.key(0), (16, 256, 256, 8)) * 0.5 + 40.0
  scale, bias = jnp.ones(8), jnp.zeros(8)
  cot = jax.random.normal(jax.random.key(1), z.shape)
  (mean, var), (_, d_scale, d_bias) = _gradients(z, scale, bias, "relu", cot)
  z64, g64 = np.asarray(z, np.float64).reshape(-1, 8), np.asarray(cot, np.float64).reshape(-1, 8)
  np.testing.assert_allclose(mean, z64.mean(0), rtol=1e-6)
  # E[z^2] - E[z]^2 at mean 40 and std 0.5 loses ~13 bits in float32 (XLA's reductions too).
  np.testing.assert_allclose(var, z64.var(0), rtol=2e-3)
  # The gradient sums, given the op's own statistics, in float64.
  xhat = (z64 - np.asarray(mean, np.float64)) / np.sqrt(np.asarray(var, np.float64) + 1e-5)
  dy = np.where(xhat > 0, g64, 0.0)
  np.testing.assert_allclose(d_bias, dy.sum(0), rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(d_scale, (dy * xhat).sum(0), rtol=1e-5, atol=1e-3)


def test_xla_reductions_where_the_library_cannot_be_built(monkeypatch):
  """No C++ compiler: the build names what is missing, and the batch norm runs on XLA's
  reductions (no custom call) with the same statistics."""
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(native.Unavailable, match="no C\\+\\+ compiler"):
    native.build("batch_norm_sums.cc")
  # A fresh, uncached copy: this process may have built and registered the library already.
  monkeypatch.setattr(native_sums, "native_sums_usable",
                      functools.cache(native_sums.native_sums_usable.__wrapped__))
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  scale, bias = jnp.array([1.0, -0.5, 2.0, 0.3]), jnp.zeros(4)
  assert "custom_call" not in _lowered(z, scale, bias, "relu")
  (mean, var), _ = _gradients(z, scale, bias, "relu", jnp.ones_like(z))
  np.testing.assert_allclose(mean, z.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxseg.models import batch_norm, native_sums
mesh = Mesh(jax.devices(), ("data",))
z = 2 * jax.random.normal(jax.random.key(0), (4, 8, 8, 16)) + 1
scale, bias = jnp.linspace(-1, 1, 16), jnp.linspace(0, 0.5, 16)
cot = jax.random.normal(jax.random.key(1), z.shape)
def loss(z, scale, bias, cot):
  y, mean, var = batch_norm.batch_norm_act(z, scale, bias, 1e-5, "relu")
  return (y * cot).sum(), (mean, var)
step = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))
zs, cots = (jax.device_put(a, NamedSharding(mesh, P("data"))) for a in (z, cot))
hlo = step.lower(zs, scale, bias, cots).compile().as_text()
(_, stats), grads = step(zs, scale, bias, cots)
native_sums.native_sums_usable = lambda: False
(_, stats_ref), grads_ref = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(
    z, scale, bias, cot)
for a, b in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_ref, grads_ref))):
  np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
print("calls", hlo.count('custom_call_target="jaxseg_BatchNormStats"'),
      hlo.count('custom_call_target="jaxseg_BatchNormGradientSums"'))
print("inputs", sorted({p.split("]")[0] + "]" for p in hlo.split("f32[")[1:]
                        if p.startswith(("4,8,8,16]", "2,8,8,16]"))}))
print("gathers", hlo.count("all-gather"))
"""


def test_sharded_batch_sums_each_devices_part(usable):
  """Two CPU devices, the batch split between them: each device's native calls read its own
  two examples (no gather of the batch), their sums are added across devices, and the
  statistics and gradients equal the unsharded XLA reductions'."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "gathers 0" in out.stdout, out.stdout
  # One statistics call and one gradient-sums call, on the devices' halves of the batch only:
  # the partitioned program never holds the whole batch (without the cross-device sums the
  # statistics would be each half's, and the values above would differ).
  assert "calls 1 1" in out.stdout, out.stdout
  assert "inputs ['2,8,8,16]']" in out.stdout, out.stdout
