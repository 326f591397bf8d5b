"""Model registry: config name -> Flax module; and the facts every model reports."""

import math

import jax
import jax.numpy as jnp

from jaxseg import hardware
from jaxseg.models.encoder_unet import EncoderUNet
from jaxseg.models.encoders import ENCODERS
from jaxseg.models.resunet import ResUNet
from jaxseg.models.unet import UNet
from jaxseg.models.unetpp import UNetPlusPlus
from jaxseg.models.unext import UNeXt

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_name(name: str) -> str:
  """model.dtype resolved: "auto" (the default) is bfloat16 on GPUs and TPUs, as mixed precision
  is by default in nnU-Net, and float32 on CPUs, where bfloat16 is faster only on CPUs with
  bfloat16 instructions (oneDNN's convolutions; BUILD.md), so that a CPU run's numerics do not
  depend on which CPU it ran on. Parameters, optimizer state and the loss stay float32 either
  way."""
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r}; known: auto, {', '.join(DTYPES)}")
  return name


def compute_dtype(name: str):
  return DTYPES[dtype_name(name)]


# Each constructor takes (model config, input channels, output channels); input channels are
# inferred from the data at init, so none needs them today. The same UNet and ResUNet modules
# are 3-D networks on [B, D, H, W, C] input.
def _unet(m, in_channels, out_channels):
  return UNet(out_channels=out_channels, features=m.features, depth=m.depth, norm=m.norm,
              dropout=m.dropout, dtype=compute_dtype(m.dtype), remat=m.remat, residual=m.residual,
              conv_impl=m.conv_impl)


def _resunet(m, in_channels, out_channels):
  return ResUNet(out_channels=out_channels, features=m.features, depth=m.depth, norm=m.norm,
                 dtype=compute_dtype(m.dtype), conv_impl=m.conv_impl)


def _unext(m, in_channels, out_channels):
  return UNeXt(out_channels=out_channels, features=m.features, norm=m.norm,
               dtype=compute_dtype(m.dtype), conv_impl=m.conv_impl)


def _with_encoder(decoder, encoder):
  def build(m, in_channels, out_channels):
    if in_channels != 3:
      raise ValueError(f"the {encoder} encoder takes 3 input channels, data has {in_channels}")
    return decoder(encoder=encoder, out_channels=out_channels, features=m.features,
                   norm=m.norm, dtype=compute_dtype(m.dtype), conv_impl=m.conv_impl)
  return build


REGISTRY = {"unet": _unet, "unet3d": _unet, "resunet": _resunet, "unext": _unext}
# Encoder models are named decoder_encoder: unet_vgg16, unetpp_efficientnet_b3, ...
ENCODER_OF = {}
for _decoder_name, _decoder in (("unet", EncoderUNet), ("unetpp", UNetPlusPlus)):
  for _encoder in ENCODERS:
    REGISTRY[f"{_decoder_name}_{_encoder}"] = _with_encoder(_decoder, _encoder)
    ENCODER_OF[f"{_decoder_name}_{_encoder}"] = _encoder


def frozen_mask(model_cfg, tree):
  """Same structure as `tree` (params or batch_stats): True where the leaf belongs to a frozen
  encoder stage named in `model.freeze` (comma-separated, e.g. 'stem,layer1,layer2')."""
  stages = {s.strip() for s in model_cfg.freeze.split(",") if s.strip()}
  if not stages:
    return jax.tree.map(lambda _: False, tree)
  if model_cfg.name not in ENCODER_OF:
    raise ValueError(f"model.freeze={model_cfg.freeze!r} needs an encoder model "
                     f"({', '.join(ENCODER_OF)}), not {model_cfg.name!r}")
  encoder = ENCODERS[ENCODER_OF[model_cfg.name]]
  known = set(encoder.STAGES)
  if stages - known:
    raise ValueError(f"model.freeze: unknown stages {sorted(stages - known)}; {model_cfg.name} "
                     f"has {sorted(known)}")

  def frozen(path, _):
    keys = [getattr(k, "key", str(k)) for k in path]
    return keys[0] == "encoder" and encoder.stage_of(keys[1]) in stages

  return jax.tree_util.tree_map_with_path(frozen, tree)


def without_gradient(params, frozen):
  """`params` with the `frozen` leaves (a frozen_mask tree) behind stop_gradient: a gradient
  taken through them leaves out their weight gradients, and the input gradients of any layers
  with nothing trainable before them."""
  return jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen, params)


def frozen_backward_flops(model, variables, input_shape, frozen) -> float:
  """Convolution and matmul FLOPs per example of the backward work that freezing leaves out of
  a training step: those of the training gradient with every layer trained, less with the
  `frozen` ones frozen (0 with none; counted as jaxseg.hardware.forward_flops says)."""
  if not any(jax.tree.leaves(frozen)):
    return 0.0
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  rest = {k: v for k, v in variables.items() if k != "params"}
  key = jax.random.key(0)

  def gradient_flops(mask):
    def loss(params, rest, x):
      y, _ = model.apply({"params": without_gradient(params, mask), **rest}, x, train=True,
                         mutable=["batch_stats"], rngs={"dropout": key})
      return jnp.sum(y.astype(jnp.float32))
    return hardware.forward_flops(jax.grad(loss), variables["params"], rest, x)

  return gradient_flops(jax.tree.map(lambda _: False, frozen)) - gradient_flops(frozen)


def build(model_cfg, in_channels: int, out_channels: int):
  if model_cfg.name not in REGISTRY:
    raise ValueError(f"model.name={model_cfg.name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[model_cfg.name](model_cfg, in_channels, out_channels)


# Kernel initialisers by config name. Flax's default (LeCun normal) is what the modules use;
# others replace every kernel after init, so one rule covers every model (the BraTS 3-D net was
# trained with Keras' He-uniform). Biases stay zero, as in Keras and Flax.
KERNEL_INITS = {
    "lecun_normal": None,
    "he_uniform": jax.nn.initializers.he_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
}


def reinit_kernels(params, key, kernel_init: str):
  """`params` with every 'kernel' leaf redrawn from the named initialiser (fan-in over all axes
  but the last: spatial x input channels for convs, including depthwise and transposed ones)."""
  if kernel_init not in KERNEL_INITS:
    raise ValueError(f"model.kernel_init={kernel_init!r}; known: {sorted(KERNEL_INITS)}")
  init = KERNEL_INITS[kernel_init]
  if init is None:
    return params
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, len(leaves))
  new = [init(k, leaf.shape, leaf.dtype)
         if getattr(path[-1], "key", None) == "kernel" else leaf
         for k, (path, leaf) in zip(keys, leaves, strict=True)]
  return jax.tree_util.tree_unflatten(treedef, new)


def init_variables(model, input_shape, seed: int = 0):
  """Parameters (and batch statistics) for a [1, *spatial, C] input; the jit avoids an eager
  op-by-op init, which is slow for deep networks."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(
      jax.random.key(seed, impl="rbg"))  # rbg: see train.state.init_key


def variable_shapes(model, input_shape):
  """Shapes and dtypes of the variables, without computing them (cheap for any model size)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0),
                                              "dropout": jax.random.key(0)}, x, train=False), x)


def count_params(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def forward_flops(model, variables, input_shape) -> float:
  """Convolution and matmul FLOPs of one inference forward pass on one example (counted as
  jaxseg.hardware.forward_flops says); `variables` may be shapes (variable_shapes)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return hardware.forward_flops(lambda v, x: model.apply(v, x, train=False), variables, x)
