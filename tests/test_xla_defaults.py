"""jaxseg's XLA flag defaults (jaxseg/__init__.py): set at import, never over the user's own."""

import os
import subprocess
import sys

import jaxseg

FLAG = jaxseg.XLA_DEFAULTS[0]


def test_defaults_are_appended_but_never_replace_the_users_choice():
  env = {}
  jaxseg._apply_xla_defaults(env)
  assert env["XLA_FLAGS"] == FLAG
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  jaxseg._apply_xla_defaults(env)
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", FLAG]
  mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  env = {"XLA_FLAGS": mine}
  jaxseg._apply_xla_defaults(env)
  assert env["XLA_FLAGS"] == mine
  env = {"XLA_FLAGS": "", "JAXSEG_XLA_DEFAULTS": "0"}
  jaxseg._apply_xla_defaults(env)
  assert env["XLA_FLAGS"] == ""


def test_defaults_only_under_the_jaxlib_they_were_measured_with():
  """XLA aborts on unknown flags, so another jaxlib (a GPU image's newer JAX) gets none."""
  assert jaxseg._jaxlib_version().startswith(jaxseg.XLA_DEFAULTS_JAXLIB)  # the pin
  env = {}
  jaxseg._apply_xla_defaults(env, jaxlib_version="0.11.2")
  assert "XLA_FLAGS" not in env
  jaxseg._apply_xla_defaults(env, jaxlib_version="0.10.2")
  assert env["XLA_FLAGS"] == FLAG


_PROBE = """
import jaxseg, jax, jax.numpy as jnp
x, w = jnp.ones((8, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
print("ynn" if "__ynn_fusion" in jax.jit(conv).lower(x, w).compile().as_text() else "xla")
"""


def test_cpu_convolutions_leave_ynnpack_only_with_the_default():
  """The flag must take effect in the pinned jaxlib (an unknown or renamed flag would either
  abort or silently do nothing)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  run = lambda e: subprocess.run([sys.executable, "-c", _PROBE], env=e, check=True,  # noqa: E731
                                 capture_output=True, text=True).stdout.split()[-1]
  assert run(env) == "xla"
  assert run({**env, "JAXSEG_XLA_DEFAULTS": "0"}) == "ynn"
