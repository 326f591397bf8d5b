"""Per-channel sums over all but the last (channel) axis on CPUs, one pass over the inputs, from
jaxseg/native/batch_norm_sums.cc (float32 or bfloat16 in, float32 sums out), where that library
builds; XLA's reductions elsewhere. Under a sharded batch each device sums its own examples and
the parts are added (native.batch_partitioned).

XLA's CPU backend took each such sum as its own reduction, and for bfloat16 inputs first wrote a
float32 copy of the whole tensor (BUILD.md performance notes). Users: batch norm's statistics and
gradient sums (models/batch_norm.py) and the bias gradients of bfloat16 layers with a plain bias
(models/conv.py: add_bias)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxseg.hardware import cpu_backend
from jaxseg.models import native

ACTIVATIONS = (None, "relu", "silu")  # the order is the native sums' activation code
DTYPES = {jnp.dtype(jnp.float32): "", jnp.dtype(jnp.bfloat16): "BF16"}  # the calls' suffixes


@functools.cache
def native_sums_usable() -> bool:
  """Whether the native sums can run in this process (built and registered now if so); where
  not, logs why once."""
  try:
    native.register(native.build("batch_norm_sums.cc"), "jaxseg_",
                    ("BatchNormStats", "BatchNormGradientSums", "BatchNormStatsBF16",
                     "BatchNormGradientSumsBF16"))
  except native.Unavailable as e:
    logging.info("per-channel sums: XLA's reductions, as the native sums cannot run here: %s", e)
    return False
  return True


def applies(x) -> bool:
  """Whether x's sums run natively here."""
  return cpu_backend() and x.dtype in DTYPES and x.ndim >= 2 and native_sums_usable()


def _per_channel_pair(z):
  out = jax.ShapeDtypeStruct(z.shape[-1:], jnp.float32)
  return out, out


def _stats_call(z, static):
  return jax.ffi.ffi_call(f"jaxseg_BatchNormStats{DTYPES[z.dtype]}", _per_channel_pair(z))(z)


def _gradient_sums_call(z, g, mean, mul, bias, act):
  return jax.ffi.ffi_call(f"jaxseg_BatchNormGradientSums{DTYPES[z.dtype]}",
                          _per_channel_pair(z))(
      z, g, mean, mul, bias, act=np.int64(ACTIVATIONS.index(act)))


@functools.cache
def _partitioned(kind: str, ndim: int):
  """The native call `kind` for inputs of rank `ndim`, batch-partitioned with its sums added
  across devices (native.batch_partitioned)."""
  axes = " ".join(["b", *"yxwvu"[:ndim - 2], "c"])
  if kind == "stats":
    return native.batch_partitioned(_stats_call, arrays=1, batched=1, sums_batch=True,
                                    rule=f"{axes} -> c, c")
  return native.batch_partitioned(_gradient_sums_call, arrays=5, batched=2, sums_batch=True,
                                  rule=f"{axes}, {axes}, c, c, c -> c, c")


def stats(x):
  """(sum of x, sum of x * x) per channel, native; only where applies(x)."""
  return _partitioned("stats", x.ndim)(x, None)


def gradient_sums(z, g, mean, mul, bias, act):
  """(sum of dy, sum of dy * (z - mean)) per channel, dy = act'((z - mean) * mul + bias) * g,
  native; only where applies(z) (g has z's dtype)."""
  return _partitioned("gradient", z.ndim)(z, g, mean, mul, bias, act)


def channel_sums(x):
  """x summed over all but its last axis, in float32. Native for bfloat16 inputs whose channels
  fill a vector (the native loop vectorises along them: a 1-channel tensor would run scalar);
  XLA's reduction otherwise: of a bfloat16 tensor XLA first wrote a float32 copy, but a float32
  one it reads once, sometimes fused with other readers (the float32 UNet step ran 0.97x with
  native sums for its up-convolutions' biases, BUILD.md performance notes)."""
  if x.dtype == jnp.bfloat16 and x.shape[-1] >= 8 and applies(x):
    return stats(x)[0]
  return x.astype(jnp.float32).sum(tuple(range(x.ndim - 1)))
