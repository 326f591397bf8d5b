"""Model FLOPs and peak arithmetic rates, for model FLOPs utilisation (MFU = achieved FLOP/s /
peak).

Model FLOPs are counted, not taken from XLA: on GPUs XLA hands convolutions to cuDNN as custom
calls, which its cost analysis counts as zero (seen on an H200, 2026-11-26: UNet 1.2 instead of
~24 GFLOP per example), so MFU read 0.7 %. `forward_flops` counts the multiply-adds of every
convolution and matrix product in the model's forward pass (traced with the portable layer
forms, so every backend gets the same count); a training step counts as three forward passes
(forward, input gradient, weight gradient), the usual MFU convention, less the gradients that
frozen layers leave out (models.frozen_backward_flops, counted the same way). Element-wise work
(normalisation, activations) is not counted, also as usual.

Accelerators: dense (no sparsity) rates from the vendors' datasheets, per chip. float32 on
NVIDIA GPUs is the TF32 tensor-core rate, which XLA uses for float32 matmuls and convolutions
at JAX's default precision. CPUs have no datasheet figure that XLA can reach, so the bench
measures one: the best of a few large matmuls in the model's dtype, by XLA and, where
it runs, oneDNN (`measured_peak`).
"""

import contextlib
import functools
import math
import time

import jax
import jax.numpy as jnp
from jax.extend import core

_portable_layers = False


def cpu_backend() -> bool:
  """Whether traced code will run on XLA's CPU backend. jaxseg writes four things differently
  there, each measured faster on CPU and not yet measured on an accelerator (BUILD.md
  performance notes): depthwise and 3-D convolutions and the 1x1 head's weight gradient
  (models/conv.py), and the gradient-accumulation loop (train/step.py); with
  model.conv_impl=auto or onednn also the other convolutions (models/onednn.py). False inside
  `portable_layers()`, so the FLOP count sees XLA's convolutions."""
  return not _portable_layers and jax.default_backend() == "cpu"


@functools.cache
def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this machine's CPU has bfloat16 arithmetic (x86's AVX-512 BF16 or AMX-BF16 flags in
  `cpuinfo`), which oneDNN's fast bfloat16 convolutions need; False where unknown."""
  try:
    with open(cpuinfo) as f:
      flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
  except OSError:
    return False
  return bool({"avx512_bf16", "amx_bf16"} & set(flags))


@contextlib.contextmanager
def portable_layers():
  """Trace with XLA's own convolutions on every backend (for counting, not for running)."""
  global _portable_layers
  before, _portable_layers = _portable_layers, True
  try:
    yield
  finally:
    _portable_layers = before


# Training step = forward + input gradient + weight gradient, each about one forward's FLOPs.
TRAIN_STEP_FORWARDS = 3


def forward_flops(fn, *args) -> float:
  """Multiply-add FLOPs (2 per MAC) of the convolutions and matrix products of fn(*args);
  args may be jax.ShapeDtypeStructs."""
  with portable_layers():
    closed = jax.make_jaxpr(fn)(*args)
  return _jaxpr_flops(closed.jaxpr)


def _jaxpr_flops(jaxpr) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
      # Each output element sums over the kernel's window and its input features per group.
      window = math.prod(rhs.shape[d] for d in spec[2:]) * rhs.shape[spec[1]]
      total += 2.0 * math.prod(out.shape) * window
    elif name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs.shape[d] for d in contracting)
    else:
      inner = [_jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
      if name == "cond":
        total += max(inner, default=0.0)
      else:
        total += sum(inner) * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def _sub_jaxprs(params):
  for value in params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, core.Jaxpr):
        yield v


# device_kind substring -> {dtype: TFLOP/s}
PEAKS = {
    "H200": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},
    "H100 PCIe": {"bfloat16": 756.0, "float16": 756.0, "float32": 378.0},
    "H100": {"bfloat16": 989.0, "float16": 989.0, "float32": 494.0},  # SXM
    "A100": {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5e": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
    "TPU v6": {"bfloat16": 918.0, "float32": 918.0},
}


def datasheet_peak(device_kind: str, dtype: str):
  """TFLOP/s per chip from PEAKS (longest matching name first), or None."""
  for name in sorted(PEAKS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAKS[name].get(dtype)
  return None


def _matmuls(dtype) -> dict:
  """n x n matmul forms to time: XLA's dot and, on CPUs where oneDNN's convolutions run for this
  dtype, the same product as oneDNN's 1x1 convolution (bfloat16 on AMX: several times XLA's
  dot, so that a peak from XLA's alone would put a model's MFU over 100 %)."""
  from jaxseg.models import conv, onednn  # here: jaxseg.models imports this module

  forms = {"XLA": lambda a: a @ a}
  rows = jax.ShapeDtypeStruct((1, 8, 1, 8), dtype)
  kernel = jax.ShapeDtypeStruct((1, 1, 8, 8), dtype)
  if onednn.applies(rows, kernel, (1, 1), ((0, 0), (0, 0))) and onednn.usable():
    # a as n rows of one pixel with n channels, times a as a 1x1 kernel of n -> n channels
    forms["oneDNN"] = lambda a: onednn.conv(a[None, :, None], a[None, None], (1, 1),
                                            ((0, 0), (0, 0)), conv.conv_nd)
  return forms


def measured_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> tuple[float, str]:
  """(TFLOP/s, which form) of the best of `repeats` n x n matmuls on the default device, over
  the forms of `_matmuls`."""
  a = jnp.ones((n, n), jnp.dtype(dtype))
  best, which = float("inf"), ""
  for name, form in _matmuls(jnp.dtype(dtype)).items():
    f = jax.jit(form)
    f(a).block_until_ready()
    for _ in range(repeats):
      t0 = time.perf_counter()
      f(a).block_until_ready()
      seconds = time.perf_counter() - t0
      if seconds < best:
        best, which = seconds, name
  return 2 * n**3 / best / 1e12, which


def peak_tflops(dtype: str) -> tuple[float, str]:
  """(peak TFLOP/s per device, where the figure comes from)."""
  kind = jax.devices()[0].device_kind
  peak = datasheet_peak(kind, dtype)
  if peak is not None:
    return peak, f"datasheet ({kind}, {dtype} dense)"
  peak, which = measured_peak(dtype)
  return peak, f"measured ({dtype} 2048^3 matmul on {kind}, {which}'s)"
