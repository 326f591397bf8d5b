"""jaxseg: medical image segmentation in JAX/Flax, built for training throughput."""

import os

__version__ = "0.1.0"

# XLA flags jaxseg sets unless the user's XLA_FLAGS already name them (or JAXSEG_XLA_DEFAULTS=0).
# They must be in the environment before JAX starts its backends, hence here, at import.
# - jaxlib 0.10 hands CPU convolutions to YNNPACK; XLA's own (Eigen) convolutions ran the UNet
#   train step 1.3-1.75x faster on this project's CPU (BUILD.md performance notes). CPU only: the
#   GPU and TPU backends ignore xla_cpu_* flags.
XLA_DEFAULTS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
# XLA aborts at start-up on a flag it does not know, and these were measured with jaxlib 0.10 only
# (the pin): under any other jaxlib (an accelerator image's own JAX, say) they are left out.
XLA_DEFAULTS_JAXLIB = "0.10."


def _jaxlib_version() -> str:
  from importlib import metadata  # metadata only: importing jaxlib here would be too early
  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return ""


def _apply_xla_defaults(environ=os.environ, jaxlib_version: str | None = None) -> None:
  if environ.get("JAXSEG_XLA_DEFAULTS", "1") == "0":
    return
  if not (jaxlib_version or _jaxlib_version()).startswith(XLA_DEFAULTS_JAXLIB):
    return
  flags = environ.get("XLA_FLAGS", "")
  for flag in XLA_DEFAULTS:
    if flag.split("=")[0] not in flags:
      flags = f"{flags} {flag}".strip()
  environ["XLA_FLAGS"] = flags


_apply_xla_defaults()
