import contextlib

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
      models.build(_unet_cfg(features=4, depth=2, norm="none"), 1, 1), (16, 16, 1))
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


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu(monkeypatch):
  assert default_config().model.dtype == "auto"
  assert models.dtype_name("auto") == "float32"  # this suite runs on the CPU
  m = models.build(_unet_cfg(features=4, depth=2, dtype="auto"), 3, 1)
  _, inter = jax.jit(lambda v, x: m.apply(v, x, train=False, capture_intermediates=True))(
      models.init_variables(m, (16, 16, 3)), jnp.ones((1, 16, 16, 3)))
  assert jnp.dtype(jnp.bfloat16) not in {x.dtype for x in jax.tree.leaves(inter)}
  for backend in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert models.dtype_name("auto") == "bfloat16"
  assert models.dtype_name("float32") == "float32"
  with pytest.raises(ValueError, match="model.dtype='half'"):
    models.dtype_name("half")


@pytest.mark.parametrize("name,kw", [("resunet", {"depth": 2}), ("unext", {}),
                                     ("unet", {"residual": True, "dropout": 0.1})])
def test_every_family_computes_in_bfloat16_with_float32_params(name, kw):
  m = models.build(_unet_cfg(name=name, features=4, dtype="bfloat16", **kw), 3, 2)
  v = models.init_variables(m, (32, 32, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  out, inter = jax.jit(lambda v, x: m.apply(v, x, train=False, capture_intermediates=True))(
      v, jnp.ones((1, 32, 32, 3)))
  assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
  # inside, activations are bfloat16
  dtypes = {x.dtype for x in jax.tree.leaves(inter)}
  assert jnp.dtype(jnp.bfloat16) in dtypes


def _conv_input_dtypes(jaxpr):
  """The dtypes of every convolution's operands in a jaxpr and the jaxprs inside it."""
  found = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      found |= {v.aval.dtype for v in eqn.invars}
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found |= _conv_input_dtypes(inner)
  return found


@pytest.mark.parametrize("name", ["unet_resnet50", "unet_vgg16", "unetpp_efficientnet_b3"])
def test_encoder_models_convolve_in_bfloat16_throughout(name):
  """With model.dtype=bfloat16 every convolution of the encoder models, in training, takes
  bfloat16 operands: a block built without the model's dtype would compute in float32 (the
  ResNet50 bottlenecks did, 2026-11-26, unseen by the test above)."""
  # XLA's convolutions, so that a float32 one would show here and not as a oneDNN call.
  m = models.build(_unet_cfg(name=name, features=4, dtype="bfloat16", conv_impl="xla"), 3, 1)
  v = models.variable_shapes(m, (32, 32, 3))  # tracing needs shapes only: no init to compile
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(
      v, jnp.ones((1, 32, 32, 3)))
  assert _conv_input_dtypes(jaxpr.jaxpr) == {jnp.dtype(jnp.bfloat16)}


def test_flops_reported_and_unknown_model_rejected():
  m = models.build(_unet_cfg(features=4, depth=2), 3, 1)
  v = models.init_variables(m, (32, 32, 3))
  assert models.forward_flops(m, v, (32, 32, 3)) > 1e6
  with pytest.raises(ValueError, match="model.name='nope'"):
    models.build(ConfigDict({"name": "nope"}), 3, 1)


def _count(name, shape, out, **kw):
  m = models.build(_unet_cfg(name=name, **kw), shape[-1], out)
  return models.count_params(models.variable_shapes(m, shape)["params"])


@pytest.mark.parametrize("name,shape,out,kw,expected", [
    # UNeXt reference (Valanarasu & Patel): about 1.47 M; this is the reference layout exactly.
    ("unext", (256, 256, 3), 1, {"features": 16}, 1_471_921),
    ("resunet", (256, 256, 3), 1, {"features": 64, "depth": 3}, 8_047_105),
    # BraTS 2-D net (reference 1,962,532) and 3-D net (reference 5,649,652).
    ("unet", (160, 160, 2), 4, {"features": 16}, 1_942_484),
    ("unet3d", (32, 32, 32, 4), 4, {"features": 16}, 5_647_732),
    # GI-tract from-scratch residual encoder-decoder (reference 25,436,486).
    ("unet", (224, 224, 3), 3, {"features": 56, "residual": True, "dropout": 0.1}, 24_836_451),
    # GI-tract transfer model: torchvision EfficientNet-B3 features[0:8] (10,103,336) + decoder.
    ("unetpp_efficientnet_b3", (224, 224, 3), 3, {"features": 16}, 13_542_043),
    ("unet_efficientnet_b3", (224, 224, 3), 3, {"features": 16}, 12_638_475),
])
def test_parameter_counts_of_the_reference_networks(name, shape, out, kw, expected):
  assert _count(name, shape, out, **kw) == expected


def test_unext_is_within_2_percent_of_the_reference_count():
  assert abs(_count("unext", (256, 256, 3), 1, features=16) - 1.47e6) / 1.47e6 < 0.02


@pytest.mark.parametrize("name,shape,kw", [
    ("unet3d", (16, 16, 16, 2), {"features": 4, "depth": 2, "norm": "instance"}),
    ("resunet", (32, 32, 3), {"features": 4, "depth": 2}),
    ("resunet", (16, 16, 16, 2), {"features": 4, "depth": 2, "norm": "group"}),
    ("unext", (64, 64, 3), {"features": 4}),
])
def test_family_output_shapes(name, shape, kw):
  m = models.build(_unet_cfg(name=name, **kw), shape[-1], 3)
  v = models.init_variables(m, shape)
  out = jax.jit(lambda v, x: m.apply(v, x, train=False))(v, jnp.ones((2, *shape)))
  assert out.shape == (2, *shape[:-1], 3) and out.dtype == jnp.float32


def test_efficientnet_b3_encoder_is_torchvisions_without_head():
  # torchvision's efficientnet_b3 has 12,233,232 parameters: minus the classifier (1536 x 1000
  # + 1000) and the 1x1 head conv + BN (384 x 1536 + 2 x 1536) that the encoder leaves out.
  from jaxseg.models.encoders import EfficientNetB3Encoder
  enc = EfficientNetB3Encoder()
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert models.count_params(shapes["params"]) == 12_233_232 - 1_537_000 - 592_896
  feats = jax.eval_shape(lambda v: enc.apply(v, jnp.zeros((1, 64, 64, 3))), shapes)
  assert [f.shape[1:] for f in feats] == [(32, 32, 24), (16, 16, 32), (8, 8, 48), (4, 4, 136),
                                          (2, 2, 384)]


def test_unet_rejects_sides_its_depth_cannot_halve():
  m = models.build(_unet_cfg(features=4, depth=4), 3, 1)
  with pytest.raises(ValueError, match="divisible by 16"):
    models.variable_shapes(m, (8, 32, 32, 3))


def test_unext_rejects_sizes_not_divisible_by_32():
  m = models.build(_unet_cfg(name="unext", features=4), 3, 1)
  with pytest.raises(ValueError, match="divisible by 32"):
    models.variable_shapes(m, (48, 48, 3))


def test_shift_tokens_moves_each_channel_group_by_its_offset():
  from jaxseg.models.unext import shift_tokens
  x = jnp.zeros((1, 1, 7, 5)).at[0, 0, 3, :].set(1.0)  # one token, 5 groups of 1 channel
  y = shift_tokens(x, axis=2)
  # group g moves by g - 2 along the width; zeros come in from the border
  assert [int(jnp.argmax(y[0, 0, :, g])) for g in range(5)] == [1, 2, 3, 4, 5]
  assert float(y.sum()) == 5.0


@pytest.mark.parametrize("shape,kernel", [((2, 12, 10, 3), (3, 3, 3, 5)),
                                          ((1, 6, 8, 7, 2), (3, 3, 3, 2, 4))])
def test_patch_weight_gradient_equals_xlas(shape, kernel):
  import numpy as np

  from jaxseg.models.conv import _conv, conv_patch_grad
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  pad, strides = ((1, 1),) * (len(shape) - 2), (1,) * (len(shape) - 2)
  want = jax.grad(lambda x, w: (_conv(x, w, strides, pad) ** 2).sum(), (0, 1))(x, w)
  got = jax.grad(lambda x, w: (conv_patch_grad(x, w, strides, pad) ** 2).sum(), (0, 1))(x, w)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


def test_conv_impl_keeps_parameter_names_and_outputs():
  shape = (16, 16, 3)
  xla = models.build(_unet_cfg(features=4, depth=2), 3, 1)
  patches = models.build(_unet_cfg(features=4, depth=2, conv_impl="patches"), 3, 1)
  v = models.init_variables(xla, shape)
  assert jax.tree.structure(v) == jax.tree.structure(models.variable_shapes(patches, shape))
  x = jnp.ones((2, *shape))
  a = jax.jit(lambda v, x: xla.apply(v, x, train=False))(v, x)
  b = jax.jit(lambda v, x: patches.apply(v, x, train=False))(v, x)
  assert jnp.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 6, 3), (2, 3, 4, 5, 3)])
def test_upconv_is_flax_conv_transpose(shape):
  import flax.linen as nn
  import numpy as np

  from jaxseg.models.layers import UpConv
  nd = len(shape) - 2
  x = jax.random.normal(jax.random.key(1), shape)
  ref = nn.ConvTranspose(4, (2,) * nd, strides=(2,) * nd)
  ours = UpConv(4)
  v = ref.init(jax.random.key(0), x)
  v_ours = ours.init(jax.random.key(0), x)
  # same parameter tree and the same initial values from the same key
  jax.tree.map(np.testing.assert_array_equal, v, v_ours)
  np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), atol=1e-5)
  g_ref = jax.grad(lambda v: (ref.apply(v, x) ** 2).sum())(v)
  g_ours = jax.grad(lambda v: (ours.apply(v, x) ** 2).sum())(v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_ours, g_ref)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3), (2, 1, 4, 2), (1, 3, 4, 5, 2)])
def test_upsample2_bilinear_is_jax_image_resize(shape):
  import numpy as np

  from jaxseg.models.layers import upsample2_bilinear
  x = jax.random.normal(jax.random.key(0), shape)
  out_shape = (shape[0], *[2 * n for n in shape[1:-1]], shape[-1])
  ref = lambda x: jax.image.resize(x, out_shape, "bilinear")  # noqa: E731
  np.testing.assert_allclose(jax.jit(upsample2_bilinear)(x), ref(x), rtol=1e-6, atol=1e-6)
  cot = jax.random.normal(jax.random.key(1), out_shape)
  g = jax.vjp(upsample2_bilinear, x)[1](cot)[0]
  np.testing.assert_allclose(g, jax.vjp(ref, x)[1](cot)[0], rtol=1e-5, atol=1e-5)


def test_upsample2_bilinear_keeps_bfloat16():
  import numpy as np

  from jaxseg.models.layers import upsample2_bilinear
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 3))
  y, vjp = jax.vjp(upsample2_bilinear, x.astype(jnp.bfloat16))
  g = vjp(jnp.ones(y.shape, jnp.bfloat16))[0]
  assert y.dtype == g.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(np.float32), upsample2_bilinear(x), rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(g.astype(np.float32), 4.0, rtol=1e-2)  # each input's weights sum to 4


@pytest.mark.parametrize("shape,features", [((2, 5, 6, 3), 1), ((2, 5, 6, 3), 4),
                                            ((1, 3, 4, 5, 2), 3)])
def test_head_is_flax_1x1_conv(shape, features):
  """Same parameters as nn.Conv(features, 1) (old checkpoints load), same outputs and gradients,
  through the CPU weight-gradient reduction and through XLA's convolution (portable_layers)."""
  import flax.linen as nn
  import numpy as np

  from jaxseg.hardware import portable_layers
  from jaxseg.models.layers import Head
  x = jax.random.normal(jax.random.key(1), shape)
  ref = nn.Conv(features, (1,) * (len(shape) - 2))
  ours = Head(features)
  v = ref.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v, ours.init(jax.random.key(0), x))
  v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias too
  loss = lambda m: lambda v, x: (jnp.sin(m.apply(v, x)) ** 2).sum()  # noqa: E731
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
  for portable in (False, True):
    with portable_layers() if portable else contextlib.nullcontext():
      out = jax.jit(ours.apply)(v, x)
      g = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(v, x)
    np.testing.assert_allclose(out, ref.apply(v, x), rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, g_ref)


@pytest.mark.parametrize("shape,window,dtype", [((2, 8, 6, 3), 2, "float32"),
                                                ((2, 9, 7, 3), 2, "float32"),
                                                ((2, 9, 7, 3), 3, "float32"),
                                                ((2, 8, 8, 4), 2, "bfloat16"),
                                                ((1, 4, 6, 8, 2), 2, "float32")])
def test_max_pool_equals_flax(shape, window, dtype):
  """Values and gradient equal nn.max_pool's, ties included: inputs rounded to a few levels make
  most windows hold several maxima, and the gradient must go to the first of them only."""
  import flax.linen as nn
  import jax.numpy as jnp
  import numpy as np

  from jaxseg.models.pooling import max_pool
  x = jnp.round(2 * jax.random.normal(jax.random.key(0), shape)).astype(dtype)
  nd = len(shape) - 2
  ref = lambda x: nn.max_pool(x, (window,) * nd, strides=(window,) * nd)  # noqa: E731
  ours = jax.jit(lambda x: max_pool(x, window))
  np.testing.assert_array_equal(ours(x), ref(x))
  cot = jax.random.normal(jax.random.key(1), ref(x).shape).astype(dtype)
  g = jax.vjp(ours, x)[1](cot)[0]
  g_ref = jax.vjp(ref, x)[1](cot)[0]
  assert g.dtype == g_ref.dtype and g.shape == x.shape
  assert int((g != 0).sum()) == cot.size  # one gradient entry per window, even with ties
  np.testing.assert_array_equal(g, g_ref)


def _separate_batch_norm(after: str, momentum=0.9, epsilon=1e-5):
  """The composition batch_norm.BatchNorm replaces: the conv's bias added, nn.BatchNorm, then
  max-pool (`after` "max_pool"), a ReLU ("relu"), a SiLU ("silu") or nothing ("none")."""
  import flax.linen as nn

  from jaxseg.models.pooling import max_pool

  class Separate(nn.Module):
    @nn.compact
    def __call__(self, x, train, offset):
      bn = nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        dtype=x.dtype, name="BatchNorm_0")
      y = bn(x + offset.astype(x.dtype))
      return {"max_pool": max_pool, "relu": nn.relu, "silu": nn.silu,
              "none": lambda y: y}[after](y)

  return Separate()


_FUSED_CASES = [((2, 8, 6, 3), "float32", False), ((2, 8, 6, 3), "float32", True),
                ((2, 9, 7, 3), "float32", False), ((1, 4, 6, 8, 2), "float32", False),
                ((2, 8, 8, 4), "bfloat16", False)]


@pytest.mark.parametrize("after", ["max_pool", "relu", "silu", "none"])
@pytest.mark.parametrize("shape,dtype,levels", _FUSED_CASES)
def test_fused_batch_norm_is_batch_norm_then_the_op(after, shape, dtype, levels):
  """batch_norm.BatchNorm with then_max_pool / act="relu" / act="silu" / neither: the same
  variables, outputs, running statistics and gradients as nn.BatchNorm followed by max_pool /
  nn.relu / nn.silu / nothing,
  with scales of both signs (a negative one pools the minimum of its input and flips the ReLU's
  mask), a ragged edge, 3-D input, ties (inputs rounded to a few levels: exact zeros for the
  ReLU) and bfloat16. The conv bias passed as the offset shifts the running mean and the
  evaluation output only."""
  import flax.linen as nn
  import jax.numpy as jnp
  import numpy as np

  from jaxseg.models.batch_norm import BatchNorm

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x, train, offset):
      return BatchNorm(dtype=x.dtype, name="BatchNorm_0")(
          x, train, offset, act=after if after in ("relu", "silu") else None,
          then_max_pool=after == "max_pool")

  x = 3 * jax.random.normal(jax.random.key(0), shape) + 1
  x = (jnp.round(x) if levels else x).astype(dtype)
  c = shape[-1]
  offset = jax.random.normal(jax.random.key(1), (c,))
  ours, ref = Fused(), _separate_batch_norm(after)
  v = ref.init(jax.random.key(2), x, True, offset)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(2), x, True, offset), v)
  v["params"]["BatchNorm_0"] = {"scale": jnp.array([1.5, -0.7, 0.3, -2.0])[:c],
                                "bias": jnp.array([0.1, 0.2, -0.3, 0.0])[:c]}
  weights = jnp.cos(jnp.arange(np.prod(ref.apply(v, x, False, offset).shape)))

  def train(model):
    def loss(params, x):
      y, upd = model.apply({**v, "params": params}, x, True, offset, mutable=["batch_stats"])
      return (y.astype(jnp.float32).ravel() * weights).sum(), (y, upd)
    (_, (y, upd)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(v["params"], x)
    return y, upd, grads

  tol = {"float32": dict(rtol=1e-5, atol=1e-5), "bfloat16": dict(rtol=2e-2, atol=2e-2)}[dtype]
  (y, upd, grads), (y_ref, upd_ref, grads_ref) = train(ours), train(ref)
  assert y.dtype == y_ref.dtype == jnp.dtype(dtype) and grads[1].dtype == jnp.dtype(dtype)
  np.testing.assert_allclose(y.astype(np.float32), y_ref.astype(np.float32), **tol)
  if after == "relu":
    assert float((y == 0).mean()) > 0.2  # the mask matters here
  # In bfloat16 the reference rounds x + offset before its statistics; this op adds the offset
  # to the float32 mean.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), upd, upd_ref)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                       np.asarray(b, np.float32), **tol),
               grads, grads_ref)
  # Evaluation reads the running statistics, with the offset where nn.BatchNorm saw it.
  v_eval = {**v, **upd_ref}
  np.testing.assert_array_equal(ours.apply(v_eval, x, False, offset),
                                ref.apply(v_eval, x, False, offset))


@pytest.mark.parametrize("after", ["max_pool", "relu", "silu", "none"])
def test_fused_batch_norm_differentiates_its_statistics(after):
  """The batch mean and variance the fused ops return are differentiable too (they feed the
  running averages in the module, whose cotangents are then symbolic zeros and the term is left
  out, but a caller may use them): against autodiff of the same formulas."""
  import numpy as np

  from jaxseg.models.batch_norm import batch_norm_act, batch_norm_max_pool, batch_stats
  from jaxseg.models.pooling import max_pool
  x = 2 * jax.random.normal(jax.random.key(0), (2, 6, 8, 3)) - 1
  scale, bias = jnp.array([0.5, -1.5, 2.0]), jnp.array([0.3, 0.0, -0.2])
  then = {"max_pool": max_pool, "relu": jax.nn.relu, "silu": jax.nn.silu,
          "none": lambda y: y}[after]
  act = None if after == "none" else after

  def fused(x, scale, bias):
    if after == "max_pool":
      return batch_norm_max_pool(x, scale, bias, 1e-5, 2)
    return batch_norm_act(x, scale, bias, 1e-5, act)

  def reference(x, scale, bias):
    mean, var = batch_stats(x)
    return then((x - mean) * (jax.lax.rsqrt(var + 1e-5) * scale) + bias), mean, var

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias)
      return (y * jnp.sin(jnp.arange(y.size).reshape(y.shape))).sum() + (
          mean * jnp.array([1.0, -2.0, 0.5])).sum() + (var * jnp.array([0.3, 1.0, -1.0])).sum()
    return jax.grad(f, (0, 1, 2))

  got, want = loss(fused)(x, scale, bias), loss(reference)(x, scale, bias)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


@pytest.mark.parametrize("kind", ["batch", "group", "instance", "none"])
def test_norm_then_max_pool_or_relu_keeps_variables_and_values(kind):
  """Norm(kind)(z, train, offset, then_max_pool=True), UNeXt's encoder stage, and
  Norm(kind)(z, train, act="relu"), ConvNormAct's, have the variables of Norm(kind) and the
  values of max_pool(Norm(kind)(z + offset)) and relu(Norm(kind)(z)) in training and
  evaluation; both at once is refused (the ReLU belongs after the pool, on the smaller
  tensor)."""
  import numpy as np

  from jaxseg.models.layers import Norm
  from jaxseg.models.pooling import max_pool
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  offset = jax.random.normal(jax.random.key(1), (8,))
  norm = Norm(kind)
  v = norm.init(jax.random.key(2), z, False)
  for options in ({"then_max_pool": True}, {"act": "relu"}):
    fused_v = norm.init(jax.random.key(2), z, False, offset, **options)
    assert jax.tree.map(np.shape, fused_v) == jax.tree.map(np.shape, v)
  for train in (True, False):
    mutable = ["batch_stats"] if train else False
    pooled = norm.apply(v, z, train, offset, then_max_pool=True, mutable=mutable)
    relu = norm.apply(v, z, train, act="relu", mutable=mutable)
    plain = norm.apply(v, z + offset, train, mutable=mutable)
    plain_z = norm.apply(v, z, train, mutable=mutable)
    if train:
      pooled, relu, plain, plain_z = pooled[0], relu[0], plain[0], plain_z[0]
    np.testing.assert_allclose(pooled, max_pool(plain), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(relu, jax.nn.relu(plain_z), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="with then_max_pool"):
    norm.apply(v, z, True, act="relu", then_max_pool=True, mutable=["batch_stats"])


def test_unext_conv_biases_before_batch_norm_get_no_gradient_and_keep_their_names():
  """UNeXt's encoder and decoder convolutions before a batch norm keep nn.Conv's kernel and bias
  (checkpoints unchanged); batch norm in training cancels the bias, so its gradient is exactly
  zero, as it is analytically. The token MLPs keep nn.Dense's names."""
  m = models.build(_unet_cfg(name="unext", features=4), 3, 1)
  v = models.init_variables(m, (32, 32, 3))
  before_norm = {f"enc_conv{i}": f"enc_bn{i}" for i in range(3)}
  before_norm.update({f"dec_conv{i}": f"dec_bn{i}" for i in range(4)})
  for conv, norm in before_norm.items():
    assert set(v["params"][conv]) == {"kernel", "bias"}
    assert set(v["params"][norm]["BatchNorm_0"]) == {"scale", "bias"}
    assert set(v["batch_stats"][norm]["BatchNorm_0"]) == {"mean", "var"}
  assert set(v["params"]["token_block0"]) == {"Dense_0", "Dense_1", "Conv_0", "LayerNorm_0"}
  assert set(v["params"]["token_block0"]["Dense_1"]) == {"kernel", "bias"}
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  grads = jax.jit(jax.grad(lambda p: (m.apply({**v, "params": p}, x, train=True,
                                              mutable=["batch_stats"])[0] ** 2).mean()))(
      v["params"])
  for conv in before_norm:
    assert not jnp.any(grads[conv]["bias"]), conv
    assert jnp.any(grads[conv]["kernel"]), conv
  assert jnp.any(grads["dec_conv4"]["bias"])  # no norm after it


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_is_flax_dense(dtype):
  """layers.Dense (its bias gradient from conv.add_bias) against nn.Dense with the same
  variables: values and gradients."""
  import flax.linen as nn
  import numpy as np

  from jaxseg.models.layers import Dense
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 16))
  ours, theirs = Dense(24, dtype=dtype), nn.Dense(24, dtype=dtype)
  v = ours.init(jax.random.key(1), x)
  assert jax.tree.map(np.shape, v) == jax.tree.map(np.shape, theirs.init(jax.random.key(1), x))
  v = jax.tree.map(lambda a: a + 0.1, v)  # a nonzero bias

  def value_and_grads(module):
    f = lambda v, x: (module.apply(v, x).astype(jnp.float32) ** 2).sum()  # noqa: E731
    return jax.jit(jax.value_and_grad(f, (0, 1)))(v, x)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32),
                                                       np.asarray(b, np.float32),
                                                       rtol=tol, atol=tol * float(np.abs(b).max())),
               value_and_grads(ours), value_and_grads(theirs))


@pytest.mark.parametrize("shape,kernel,stride,pad", [((2, 9, 11, 5), 3, 1, 1),
                                                     ((2, 9, 11, 5), 3, 2, 1),
                                                     ((2, 10, 10, 6), 5, 2, 2),
                                                     ((2, 10, 9, 6), 5, 1, 2),
                                                     ((2, 8, 9, 4), 3, 1, 0),
                                                     ((2, 6, 7, 4), 3, 1, 3),
                                                     ((1, 5, 6, 7, 3), 3, 1, 1),
                                                     ((1, 5, 7, 6, 2), 3, 2, 1)])
def test_depthwise_conv_is_flax_grouped_conv(shape, kernel, stride, pad):
  """The shifted-sum depthwise conv (CPU default) against nn.Conv(feature_group_count=C):
  same parameters from the same key, outputs and gradients."""
  import flax.linen as nn
  import numpy as np

  from jaxseg.models.conv import DepthwiseConv
  nd, c = len(shape) - 2, shape[-1]
  x = jax.random.normal(jax.random.key(1), shape)
  ref = nn.Conv(c, (kernel,) * nd, strides=(stride,) * nd, padding=((pad, pad),) * nd,
                feature_group_count=c)
  ours = DepthwiseConv((kernel,) * nd, stride, pad, impl="shift")
  v = ref.init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v, ours.init(jax.random.key(0), x))
  v = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), v)  # bias != 0
  # Jitted: op by op, the shifted sum compiles each of its many slices apart (seconds a case).
  np.testing.assert_allclose(jax.jit(ours.apply)(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda v, x: (m.apply(v, x) ** 2).sum()  # noqa: E731
  got = jax.jit(jax.grad(loss(ours), (0, 1)))(v, x)
  want = jax.jit(jax.grad(loss(ref), (0, 1)))(v, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3), got, want)


def test_depthwise_conv_in_bfloat16_keeps_dtypes_and_values():
  """The hand-written kernel gradient accumulates in float32 and returns the kernel's dtype."""
  import jax.numpy as jnp
  import numpy as np

  from jaxseg.models.conv import depthwise_conv
  x = jax.random.normal(jax.random.key(0), (2, 12, 10, 8))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
  conv = lambda x, k: depthwise_conv(x, k, (1, 1), ((1, 1), (1, 1)), impl="shift")  # noqa: E731
  loss = lambda x, k: (conv(x, k).astype(jnp.float32) ** 2).sum()  # noqa: E731
  gx, gk = jax.grad(loss, (0, 1))(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
  want_x, want_k = jax.grad(loss, (0, 1))(x, k)
  assert conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  assert gx.dtype == gk.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(gk, np.float32), want_k, rtol=0.05, atol=0.5)
  np.testing.assert_allclose(np.asarray(gx, np.float32), want_x, rtol=0.05, atol=0.5)


def test_depthwise_kernel_gradient_is_accurate_over_many_positions():
  """The kernel gradient sums batch x height x width products in float32; against a float64
  sum it must stay within 2e-6 of the largest entry (7.9e-7 now; one running sum over all
  37k positions drifted to 3.4e-6)."""
  import numpy as np

  from jaxseg.models.conv import depthwise_conv
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((4, 96, 96, 8)) * 2 + 1).astype(np.float32)
  g = rng.standard_normal(x.shape).astype(np.float32)
  k = rng.standard_normal((3, 3, 1, 8)).astype(np.float32)
  conv = lambda k: depthwise_conv(x, k, (1, 1), ((1, 1), (1, 1)), impl="shift")  # noqa: E731
  got = np.asarray(jax.vjp(conv, k)[1](g)[0], np.float64)
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([(xp[:, i:i + 96, j:j + 96] * g).sum(axis=(0, 1, 2))
                   for i in range(3) for j in range(3)]).reshape(k.shape)
  assert np.abs(got - want).max() < 2e-6 * np.abs(want).max()


def test_depthwise_conv_picks_shift_on_cpu_and_rejects_unknown_impls():
  from jaxseg.models import conv
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2))
  args = ((1, 1), ((1, 1), (1, 1)))
  text = jax.jit(lambda x, w: conv.depthwise_conv(x, w, *args)).lower(x, w).as_text()
  assert ("feature_group_count" in text) == (jax.default_backend() != "cpu")
  with pytest.raises(ValueError, match="depthwise impl"):
    conv.depthwise_conv(x, w, *args, impl="winograd")


@pytest.mark.parametrize("shape,kernel,padding", [((2, 5, 6, 7, 3), (3, 3, 3, 3, 4), 1),
                                                  ((1, 6, 5, 4, 2), (1, 1, 1, 2, 3), 0),
                                                  ((1, 4, 5, 6, 2), (3, 3, 3, 2, 2), 0)])
def test_3d_conv_as_2d_sum_equals_xlas(shape, kernel, padding):
  import numpy as np

  from jaxseg.models.conv import _conv, conv3d_as_2d
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), kernel)
  pad = ((padding, padding),) * 3
  np.testing.assert_allclose(conv3d_as_2d(x, w, pad), _conv(x, w, (1, 1, 1), pad), rtol=1e-5,
                             atol=1e-4)
  loss = lambda f: lambda x, w: (f(x, w, (1, 1, 1), pad) ** 2).sum()  # noqa: E731
  got = jax.grad(loss(lambda x, w, s, p: conv3d_as_2d(x, w, p)), (0, 1))(x, w)
  want = jax.grad(loss(_conv), (0, 1))(x, w)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)


def test_3d_conv_norm_act_keeps_flax_conv_parameters_and_initial_values():
  """3-D ConvNormAct builds jaxseg's Conv (for the CPU 3-D path) where it built nn.Conv: the
  same parameter tree, initial values from the same key, and outputs."""
  import flax.linen as nn
  import numpy as np

  from jaxseg.models.layers import ConvNormAct

  class FlaxConv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(3, (3, 3, 3), padding="SAME", name="Conv_0")(x)

  x = jax.random.normal(jax.random.key(2), (1, 4, 4, 4, 2))
  ours = ConvNormAct(3, norm="none", act=False)
  v, v_ref = ours.init(jax.random.key(0), x, False), FlaxConv().init(jax.random.key(0), x)
  jax.tree.map(np.testing.assert_array_equal, v, v_ref)
  np.testing.assert_allclose(ours.apply(v, x, False), FlaxConv().apply(v, x), rtol=1e-5,
                             atol=1e-5)


def test_3d_conv_runs_as_2d_convolutions_on_cpu_only():
  from jaxseg.models.conv import conv_nd
  x, w = jnp.ones((1, 4, 4, 4, 2)), jnp.ones((3, 3, 3, 2, 2))
  hlo = jax.jit(lambda x, w: conv_nd(x, w, (1, 1, 1), ((1, 1),) * 3)).lower(x, w).as_text()
  assert hlo.count("stablehlo.convolution") == (3 if jax.default_backend() == "cpu" else 1)
  strided = jax.jit(lambda x, w: conv_nd(x, w, (2, 2, 2), ((1, 1),) * 3)).lower(x, w).as_text()
  assert strided.count("stablehlo.convolution") == 1
