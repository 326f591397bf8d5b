"""model.conv_impl=auto / onednn: oneDNN's convolutions under XLA (jaxseg.models.onednn)."""

import functools
import importlib.metadata
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxseg import hardware
from jaxseg.models import conv, native, onednn

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


@pytest.mark.parametrize("shape,kernel,cout,strides,padding", [
    ((2, 16, 16, 8), 3, 4, (1, 1), SAME),
    ((1, 7, 5, 3), 3, 16, (1, 1), SAME),
    ((3, 12, 10, 32), 3, 24, (1, 1), SAME),
    ((2, 9, 8, 4), 3, 6, (2, 2), ((1, 1), (1, 1))),  # strided, odd height (ResNet, ResUNet)
    ((2, 8, 8, 4), 3, 6, (2, 2), ((0, 1), (0, 1))),  # Flax's asymmetric 'SAME' at stride 2
    ((2, 16, 12, 3), 7, 8, (2, 2), ((3, 3), (3, 3))),  # ResNet's stem
    ((2, 8, 6, 16), 1, 12, (1, 1), ((0, 0), (0, 0))),  # 1x1
    ((2, 8, 6, 16), 1, 12, (2, 2), ((0, 0), (0, 0))),  # strided 1x1 (ResNet's downsample)
])
def test_onednn_convolution_and_gradients_equal_xla(built, shape, kernel, cout, strides, padding):
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], cout))
  assert onednn.applies(x, w, strides, padding)
  assert "jaxseg_onednn_ConvWgrad" in jax.jit(jax.grad(_loss(_ours, strides, padding), 1)).lower(
      x, w).as_text()
  np.testing.assert_allclose(jax.jit(_ours, static_argnums=(2, 3))(x, w, strides, padding),
                             conv.conv_nd(x, w, strides, padding), rtol=1e-5, atol=1e-5)
  ours = jax.jit(jax.grad(_loss(_ours, strides, padding), (0, 1)))(x, w)
  ref = jax.grad(_loss(conv.conv_nd, strides, padding), (0, 1))(x, w)
  for a, b in zip(ours, ref, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("shape,kernel,dtype,groups", [
    ((2, 8, 8, 4), 3, jnp.float16, 1),  # neither float32 nor bfloat16
    ((2, 8, 8, 4), 3, jnp.float32, 2),  # grouped
    ((2, 4, 8, 8, 4), 3, jnp.float32, 1),  # 3-D (conv.conv_nd splits those into 2-D ones)
])
def test_convolutions_onednn_does_not_take_stay_xla(shape, kernel, dtype, groups):
  nd = len(shape) - 2
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (kernel,) * nd + (shape[-1] // groups, 6)).astype(dtype)
  strides, padding = (1,) * nd, ((1, 1),) * nd
  assert not onednn.applies(x, w, strides, padding)
  fallback = lambda x, w, s, p: lax.conv_general_dilated(  # noqa: E731
      x, w, s, p, dimension_numbers=conv._dimension_numbers(nd), feature_group_count=groups)
  np.testing.assert_array_equal(onednn.conv(x, w, strides, padding, fallback),
                                fallback(x, w, strides, padding))


@pytest.mark.parametrize("name", ["unet", "unext"])
def test_models_with_onednn_keep_parameters_and_gradients(built, name):
  from jaxseg.config import default_config
  from jaxseg.models import build, init_variables, variable_shapes
  grads, trees, v = {}, {}, None
  for impl in ("xla", "onednn"):
    c = default_config()
    c.model.name, c.model.features, c.model.conv_impl = name, 4, impl
    model = build(c.model, 3, 1)
    trees[impl] = jax.tree.map(lambda a: (a.shape, a.dtype), variable_shapes(model, (32, 32, 3)))
    if v is None:  # one init for both: their variables are the same (trees equal)
      v = init_variables(model, (32, 32, 3))
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


@pytest.mark.parametrize("shape,kernel,cout,strides,padding", [
    ((2, 16, 16, 8), 3, 4, (1, 1), SAME),
    ((2, 9, 8, 4), 3, 6, (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 6, 16), 1, 12, (1, 1), ((0, 0), (0, 0))),
])
def test_bfloat16_convolution_and_gradients_equal_float32_xla(built, shape, kernel, cout,
                                                              strides, padding):
  """On CPUs with bfloat16 instructions oneDNN takes bfloat16 convolutions (float32
  accumulation): results within bfloat16 rounding of XLA's float32 convolution of the same
  bfloat16 values, in bfloat16."""
  if not hardware.cpu_has_bfloat16():
    pytest.skip("this CPU has no bfloat16 instructions (AVX-512 BF16 / AMX-BF16)")
  x = jax.random.normal(jax.random.key(0), shape).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, shape[-1], cout)).astype(jnp.bfloat16)
  assert onednn.applies(x, w, strides, padding)
  f32 = lambda x, w, s, p: conv.conv_nd(x.astype(jnp.float32), w.astype(jnp.float32), s, p)  # noqa: E731
  loss = lambda op: lambda x, w: (op(x, w, strides, padding).astype(jnp.float32) ** 2).sum()  # noqa: E731
  lowered = jax.jit(jax.grad(loss(_ours), (0, 1))).lower(x, w).as_text()
  assert all(f"jaxseg_onednn_{h}BF16" in lowered for h in ("ConvFwd", "ConvBwdData", "ConvWgrad"))
  got = [jax.jit(_ours, static_argnums=(2, 3))(x, w, strides, padding),
         *jax.jit(jax.grad(loss(_ours), (0, 1)))(x, w)]
  want = [f32(x, w, strides, padding), *jax.grad(loss(f32), (0, 1))(x, w)]
  for a, b in zip(got, want, strict=True):
    assert a.dtype == jnp.bfloat16
    # bfloat16 keeps 8 bits: each output rounded once, from float32 sums.
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=2**-7, atol=2**-7 * float(jnp.max(jnp.abs(b))))


def test_bfloat16_stays_xla_on_cpus_without_bfloat16_instructions(monkeypatch):
  """oneDNN has only reference kernels for bfloat16 there, far slower than XLA's."""
  x, w = jnp.ones((2, 8, 8, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 6), jnp.bfloat16)
  monkeypatch.setattr(hardware, "cpu_has_bfloat16", lambda: False)
  monkeypatch.setattr(onednn, "cpu_has_bfloat16", lambda: False)
  assert not onednn.applies(x, w, (1, 1), SAME)
  assert onednn.applies(x.astype(jnp.float32), w.astype(jnp.float32), (1, 1), SAME)
  monkeypatch.setattr(onednn, "cpu_has_bfloat16", lambda: True)
  assert onednn.applies(x, w, (1, 1), SAME)


def test_cpu_bfloat16_flags_are_read_from_cpuinfo(tmp_path):
  for i, (flags, expected) in enumerate((("fpu avx2 avx512f", False),
                                         ("fpu avx512f avx512_bf16", True),
                                         ("fpu amx_bf16 amx_tile", True))):
    info = tmp_path / f"cpuinfo{i}"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert hardware.cpu_has_bfloat16(str(info)) == expected, flags
  assert not hardware.cpu_has_bfloat16(str(tmp_path / "missing"))  # unknown: no


def test_missing_pieces_are_named(monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(onednn.Unavailable, match="no C\\+\\+ compiler"):
    onednn.build()
  monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/c++")

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, "distribution", missing)
  with pytest.raises(onednn.Unavailable, match=r"onednn-devel-cpu-gomp .*x86-64 Linux"):
    onednn.build()


def _without_onednn(monkeypatch):
  """This process as on a machine where oneDNN cannot run (no compiler)."""
  monkeypatch.setattr(shutil, "which", lambda name: None)
  # Fresh, uncached copies: this process may have built and registered oneDNN already.
  monkeypatch.setattr(onednn, "register", onednn.register.__wrapped__)
  monkeypatch.setattr(onednn, "usable", functools.cache(onednn.usable.__wrapped__))


def test_auto_is_xla_where_onednn_cannot_run_and_onednn_says_why(monkeypatch):
  _without_onednn(monkeypatch)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  assert onednn.applies(x, w, (1, 1), SAME)
  auto = onednn.conv(x, w, (1, 1), SAME, conv.conv_nd, required=False)
  np.testing.assert_array_equal(auto, conv.conv_nd(x, w, (1, 1), SAME))
  assert "custom_call" not in jax.jit(lambda x, w: onednn.conv(
      x, w, (1, 1), SAME, conv.conv_nd, required=False)).lower(x, w).as_text()
  with pytest.raises(onednn.Unavailable, match="no C\\+\\+ compiler"):
    onednn.conv(x, w, (1, 1), SAME, conv.conv_nd)


def test_auto_is_onednn_where_it_can_run(built):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  assert onednn.usable()
  lowered = jax.jit(lambda x, w: onednn.conv(x, w, (1, 1), SAME, conv.conv_nd,
                                              required=False)).lower(x, w).as_text()
  assert "jaxseg_onednn_ConvFwd" in lowered


@pytest.mark.parametrize("name,shape,residual", [
    ("resunet", (32, 32, 3), False), ("unet_vgg16", (32, 32, 3), False),
    ("unet_resnet50", (32, 32, 3), False), ("unet_efficientnet_b3", (32, 32, 3), False),
    ("unet", (32, 32, 3), True),  # the GI scratch network: 1x1 shortcuts
    ("unet3d", (8, 16, 16, 3), False)])
def test_other_models_take_onednn_and_keep_their_parameters(built, name, shape, residual):
  """conv_impl reaches every model's convolutions (the encoders' stems and 1x1 ones, the
  shortcuts), with the same variables."""
  from jaxseg.config import default_config
  from jaxseg.models import build, variable_shapes
  trees, texts = {}, {}
  for impl in ("xla", "auto"):
    c = default_config()
    c.model.name, c.model.features, c.model.depth, c.model.conv_impl = name, 4, 2, impl
    c.model.residual = residual
    model = build(c.model, 3, 1)
    v = variable_shapes(model, shape)  # shapes suffice to lower: no init to compile
    trees[impl] = jax.tree.map(lambda a: (a.shape, a.dtype), v)
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    texts[impl] = jax.jit(model.apply).lower(v, x).as_text()
  assert trees["xla"] == trees["auto"]
  assert "jaxseg_onednn" not in texts["xla"]
  assert "jaxseg_onednn_ConvFwd" in texts["auto"]


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxseg.models import conv, onednn
same = ((1, 1), (1, 1))
mesh = Mesh(jax.devices(), ("data",))
x = jax.random.normal(jax.random.key(0), (4, 16, 16, 8))
w = jax.random.normal(jax.random.key(1), (3, 3, 8, 6))
ours = lambda x, w: (onednn.conv(x, w, (1, 1), same, conv.conv_nd) ** 2).sum()
step = jax.jit(jax.grad(ours, (0, 1)))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
ws = jax.device_put(w, NamedSharding(mesh, P()))
hlo = step.lower(xs, ws).compile().as_text()
ref = jax.grad(lambda x, w: (conv.conv_nd(x, w, (1, 1), same) ** 2).sum(), (0, 1))(x, w)
for _ in range(3):  # the devices run their calls at the same time: a shared buffer would show
  for a, b in zip(step(xs, ws), ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
print("calls", [l.split("=")[1].split("{")[0].strip() for l in hlo.splitlines()
                if "jaxseg_onednn" in l])
print("gathers", hlo.count("all-gather"), "sums", hlo.count("all-reduce("))
"""


def test_sharded_batch_runs_on_each_devices_part(built):
  """Two CPU devices, batch split between them: each device's oneDNN calls see its own two
  examples (no gather of the batch), the weight gradient is summed across them, and the
  gradients equal XLA's."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  calls = out.stdout.split("calls ")[1].splitlines()[0]
  assert calls.count("f32[2,16,16,") == 2 and "f32[3,3,8,6]" in calls, calls
  assert "gathers 0 sums 1" in out.stdout, out.stdout


def test_unwritable_cache_is_named(monkeypatch, tmp_path):
  """auto must fall back, not crash, where the cache folder cannot be written."""
  blocker = tmp_path / "not-a-folder"
  blocker.write_text("")
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
  monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/c++")
  monkeypatch.setattr(native, "find", lambda distribution, suffix: str(tmp_path / "x" / "y" / suffix))
  with pytest.raises(onednn.Unavailable, match="cannot write the compiled library under"):
    onednn.build()


def test_3d_convolution_as_onednn_planes_equals_xla(built):
  """A 3-D convolution split into 2-D ones over its depth taps (conv.conv_nd on CPU), those run
  by oneDNN: values and both gradients as XLA's own 3-D convolution."""
  x = jax.random.normal(jax.random.key(0), (2, 5, 8, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 6))
  pad = ((1, 1),) * 3
  conv2d = functools.partial(onednn.conv, fallback=conv._conv)
  ours = lambda x, w: (conv.conv_nd(x, w, (1, 1, 1), pad, conv2d) ** 2).sum()  # noqa: E731
  ref = lambda x, w: (conv._conv(x, w, (1, 1, 1), pad) ** 2).sum()  # noqa: E731
  assert "jaxseg_onednn_ConvWgrad" in jax.jit(jax.grad(ours, 1)).lower(x, w).as_text()
  for a, b in zip(jax.jit(jax.grad(ours, (0, 1)))(x, w), jax.grad(ref, (0, 1))(x, w),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
