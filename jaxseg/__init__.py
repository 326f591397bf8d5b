"""jaxseg: medical image segmentation in JAX/Flax, built for training throughput."""

import os

__version__ = "0.1.0"

# XLA flags jaxseg sets unless the user's XLA_FLAGS already name them (or JAXSEG_XLA_DEFAULTS=0).
# They must be in the environment before JAX starts its backends, hence here, at import.
# - jaxlib 0.10 hands CPU convolutions to YNNPACK; XLA's own (Eigen) convolutions ran the UNet
#   train step 1.3-1.75x faster on this project's CPU (BUILD.md performance notes). CPU only: the
#   GPU and TPU backends ignore xla_cpu_* flags.
XLA_DEFAULTS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def _apply_xla_defaults(environ=os.environ) -> None:
  if environ.get("JAXSEG_XLA_DEFAULTS", "1") == "0":
    return
  flags = environ.get("XLA_FLAGS", "")
  for flag in XLA_DEFAULTS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  environ["XLA_FLAGS"] = flags


_apply_xla_defaults()
