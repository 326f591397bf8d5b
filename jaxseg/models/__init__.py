"""Model registry: config name -> Flax module; and the facts every model reports."""

import math

import jax
import jax.numpy as jnp

from jaxseg.models.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _unet(m, in_channels, out_channels):
  del in_channels  # inferred from the input at init
  return UNet(out_channels=out_channels, features=m.features, depth=m.depth,
              batch_norm=m.batch_norm, dropout=m.dropout, dtype=DTYPES[m.dtype], remat=m.remat)


REGISTRY = {"unet": _unet}


def build(model_cfg, in_channels: int, out_channels: int):
  if model_cfg.name not in REGISTRY:
    raise ValueError(f"model.name={model_cfg.name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[model_cfg.name](model_cfg, in_channels, out_channels)


def init_variables(model, input_shape, seed: int = 0):
  """Parameters (and batch statistics) for a [1, *spatial, C] input; the jit avoids an eager
  op-by-op init, which is slow for deep networks."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(
      jax.random.key(seed))


def variable_shapes(model, input_shape):
  """Shapes and dtypes of the variables, without computing them (cheap for any model size)."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0),
                                              "dropout": jax.random.key(0)}, x, train=False), x)


def count_params(params) -> int:
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def forward_flops(model, variables, input_shape) -> float:
  """FLOPs of one inference forward pass on one example, from XLA's cost analysis."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", 0.0))
