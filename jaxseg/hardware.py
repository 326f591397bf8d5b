"""Peak arithmetic rates, for model FLOPs utilisation (MFU = achieved FLOP/s / peak).

Accelerators: dense (no sparsity) rates from the vendors' datasheets, per chip. float32 on
NVIDIA GPUs is the TF32 tensor-core rate, which XLA uses for float32 matmuls and convolutions
at JAX's default precision. CPUs have no datasheet figure that XLA can reach, so the bench
measures one: the best of a few large matmuls in the model's dtype (`measured_peak`).
"""

import time

import jax
import jax.numpy as jnp


def cpu_backend() -> bool:
  """Whether traced code will run on XLA's CPU backend. jaxseg writes three things differently
  there, each measured faster on CPU and not yet measured on an accelerator (BUILD.md
  performance notes): depthwise and 3-D convolutions (models/conv.py) and the
  gradient-accumulation loop (train/step.py)."""
  return jax.default_backend() == "cpu"


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


def model_flops(lowered) -> float:
  """FLOPs of a lowered (not yet compiled) jitted function, from XLA's cost analysis.

  Counted on the module before XLA optimises it: on GPUs the compiled module hands convolutions
  to cuDNN as custom calls that its cost analysis counts as zero (seen on an H200, 2026-11-26:
  UNet 1.2 instead of 23.7 GFLOP per example); on the CPU the two counts agree within 3 %.
  The compiled count stands in where the lowered one is missing."""
  for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
    cost = analyse()
    cost = cost[0] if isinstance(cost, list) else cost
    if cost and cost.get("flops"):
      return float(cost["flops"])
  return 0.0


def measured_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
  """TFLOP/s of the best of `repeats` n x n matmuls on the default device."""
  dt = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[dtype]
  a = jnp.ones((n, n), dt)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e12


def peak_tflops(dtype: str) -> tuple[float, str]:
  """(peak TFLOP/s per device, where the figure comes from)."""
  kind = jax.devices()[0].device_kind
  peak = datasheet_peak(kind, dtype)
  if peak is not None:
    return peak, f"datasheet ({kind}, {dtype} dense)"
  return measured_peak(dtype), f"measured ({dtype} 2048^3 matmul on {kind})"
