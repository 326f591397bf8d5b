"""Model FLOPs counting and the peak table behind MFU."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxseg import hardware, models
from jaxseg.config import default_config


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"]


def test_convolution_and_matmul_flops_counted_exactly():
  x = jax.ShapeDtypeStruct((2, 16, 16, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 8, 12), jnp.float32)
  conv = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # 2 x 8 x 8 outputs of 12 features, each 3 * 3 * 8 multiply-adds
  assert hardware.forward_flops(conv, x, w) == 2 * (2 * 8 * 8 * 12) * (3 * 3 * 8)
  grouped = lambda x, w: lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=8)
  depthwise = jax.ShapeDtypeStruct((3, 3, 1, 8), jnp.float32)
  assert hardware.forward_flops(grouped, x, depthwise) == 2 * (2 * 16 * 16 * 8) * 9
  a, b = jax.ShapeDtypeStruct((4, 5, 6), jnp.float32), jax.ShapeDtypeStruct((6, 7), jnp.float32)
  assert hardware.forward_flops(lambda a, b: a @ b, a, b) == 2 * 4 * 5 * 7 * 6


def test_flops_inside_jit_scan_cond_and_custom_vjp():
  a = jax.ShapeDtypeStruct((8, 8), jnp.float32)
  one = 2 * 8**3

  def scanned(a):
    return lax.scan(lambda c, _: (c @ a, None), a, None, length=5)[0]

  assert hardware.forward_flops(jax.jit(scanned), a) == 5 * one

  def branches(a):  # the costlier branch counts
    return lax.cond(a[0, 0] > 0, lambda a: a @ a @ a, lambda a: a, a)

  assert hardware.forward_flops(branches, a) == 2 * one

  @jax.custom_vjp
  def f(a):
    return a @ a

  f.defvjp(lambda a: (a @ a, a), lambda a, g: (g @ a.T + a.T @ g,))
  assert hardware.forward_flops(f, a) == one


def test_model_count_agrees_with_xla_on_cpu_and_is_backend_independent():
  # XLA's CPU cost analysis counts convolutions (GPU's does not); element-wise work and
  # padded borders make the two differ by a few per cent.
  c = default_config()
  c.model.name, c.model.features, c.model.depth = "unet", 8, 3
  c.model.conv_impl = "xla"  # XLA's cost analysis does not see inside oneDNN's custom calls
  m = models.build(c.model, 3, 1)
  v = models.variable_shapes(m, (64, 64, 3))
  counted = models.forward_flops(m, v, (64, 64, 3))
  x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  xla = _xla_flops(lambda v, x: m.apply(v, x, train=False), v, x)
  np.testing.assert_allclose(counted, xla, rtol=0.05)
  # UNeXt's depthwise convolutions run as shifted sums on CPU; the count still includes them.
  c.model.name, c.model.features = "unext", 8
  m = models.build(c.model, 3, 1)
  v = models.variable_shapes(m, (64, 64, 3))
  with_depthwise = models.forward_flops(m, v, (64, 64, 3))
  xla = _xla_flops(lambda v, x: m.apply(v, x, train=False), v, x)
  np.testing.assert_allclose(with_depthwise, xla, rtol=0.1)


def test_portable_layers_only_while_counting():
  before = hardware.cpu_backend()
  assert before == (jax.default_backend() == "cpu")
  with hardware.portable_layers():
    assert not hardware.cpu_backend()
  assert hardware.cpu_backend() == before


def test_datasheet_peaks_match_longest_name():
  assert hardware.datasheet_peak("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert hardware.datasheet_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
  assert hardware.datasheet_peak("NVIDIA H200", "float32") == 494.0
  assert hardware.datasheet_peak("cpu", "float32") is None


def test_bench_step_counts_three_forwards_per_example_and_times_both_ways():
  from jaxseg.bench import bench_step
  c = default_config()
  c.model.name, c.model.features, c.model.depth = "unet", 4, 2
  c.data.image_size, c.data.batch_size = 32, 2
  r = bench_step(c, steps=2, warmup=1)
  m = models.build(c.model, 3, 1)
  per_example = models.forward_flops(m, models.variable_shapes(m, (32, 32, 3)), (32, 32, 3))
  assert r["gflop_per_step"] * 1e9 == hardware.TRAIN_STEP_FORWARDS * per_example * 2
  assert r["ms_per_step"] > 0 and r["ms_per_step_unsynced"] > 0
  np.testing.assert_allclose(r["images_per_s_unsynced"], 2e3 / r["ms_per_step_unsynced"])
  assert 0 < r["mfu"] < 1


def test_cpu_peak_is_the_best_of_xla_and_onednn_matmuls():
  """On CPUs where oneDNN runs, the peak behind MFU also times the matmul as oneDNN's 1x1
  convolution (AMX makes its bfloat16 several times XLA's dot): both forms compute a @ a."""
  from jaxseg.models import onednn
  a = jax.random.normal(jax.random.key(0), (64, 64))
  forms = hardware._matmuls(jnp.dtype(jnp.float32))
  assert "XLA" in forms and ("oneDNN" in forms) == onednn.usable()
  for form in forms.values():
    np.testing.assert_allclose(np.asarray(form(a)).reshape(64, 64), a @ a, rtol=1e-4, atol=1e-4)
  peak, which = hardware.measured_peak("float32", n=256, repeats=2)
  assert peak > 0 and which in forms
