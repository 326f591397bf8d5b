"""Shift-scale-rotate, once on the host (numpy / scipy, in Grain workers) and once on the device
(jax, inside the jitted step), from the same parameters and the same matrix, so the two agree.

Conventions (scipy's): a warp maps each output pixel o to the input position M @ o + offset
(in (row, col) of the H, W plane), sampled bilinearly for images and nearest for masks, with
zeros outside. Volumes [D, H, W, C] are warped slice by slice in the same plane.
"""

import math

import numpy as np


def ssr_params(u, h: int, w: int, shift: float, scale: float, rotate: float, xp=np):
  """(M [2, 2], offset [2]) from four uniforms in [0, 1): shift y, shift x, scale, angle.

  The image is scaled by 1 + scale * (2u - 1), rotated by rotate * (2u - 1) degrees about its
  centre and shifted by shift * (2u - 1) of its size. Works with numpy or jax.numpy (`xp`).
  """
  ty = shift * (2 * u[0] - 1) * h
  tx = shift * (2 * u[1] - 1) * w
  s = 1 + scale * (2 * u[2] - 1)
  a = math.pi / 180 * rotate * (2 * u[3] - 1)
  cos, sin = xp.cos(a), xp.sin(a)
  # Inverse of "rotate by a, scale by s": output -> input.
  m = xp.stack([xp.stack([cos, sin]), xp.stack([-sin, cos])]) / s
  c = xp.array([(h - 1) / 2, (w - 1) / 2])
  offset = c - m @ (c + xp.stack([ty, tx]))
  return m, offset


def warp_host(array: np.ndarray, m: np.ndarray, offset: np.ndarray, nearest: bool) -> np.ndarray:
  """[H, W, C] or [D, H, W, C] numpy array warped in the (H, W) plane."""
  from scipy import ndimage
  lead = array.ndim - 3  # 0 for images, 1 for volumes
  full = np.eye(array.ndim)
  full[lead:lead + 2, lead:lead + 2] = m
  full_offset = np.zeros(array.ndim)
  full_offset[lead:lead + 2] = offset
  return ndimage.affine_transform(array, full, full_offset, order=0 if nearest else 1,
                                  mode="grid-constant", cval=0.0, prefilter=False).astype(array.dtype)


def warp_device(array, m, offset, nearest: bool):
  """The same warp in jax for one [H, W, C] image (vmap it over a batch)."""
  import jax
  import jax.numpy as jnp
  h, w = array.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  src = jnp.einsum("ij,jhw->ihw", m, jnp.stack([rows, cols])) + offset[:, None, None]
  order = 0 if nearest else 1
  warp = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=order,  # noqa: E731
                                                      mode="constant", cval=0.0)
  return jax.vmap(warp, in_axes=-1, out_axes=-1)(array)
