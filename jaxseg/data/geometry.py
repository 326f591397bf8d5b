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


def affine_field(m, offset, h: int, w: int):
  """The warp as a dense field src [2, H, W] (jax): where each output pixel samples."""
  import jax.numpy as jnp
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  return jnp.einsum("ij,jhw->ihw", m, jnp.stack([rows, cols])) + offset[:, None, None]


def warp_device(array, m, offset, nearest: bool):
  """The same warp in jax for one [H, W, C] image (vmap it over a batch)."""
  return warp_field_device(array, affine_field(m, offset, *array.shape[:2]), nearest)


# ---- dense warps: elastic deformation and grid distortion ------------------------------------
# Both give a source position for every output pixel, src [2, H, W] in (row, col), from a few
# random numbers drawn by the caller, so host and device use the same field.


def elastic_field(noise, h: int, w: int, alpha: float, map_coordinates, xp=np):
  """Identity plus a smooth random displacement: `noise` [2, n, n] standard normals on an n x n
  control grid, scaled to `alpha` pixels and interpolated bilinearly to every pixel (a B-spline
  style elastic deformation: smooth by construction, no full-size Gaussian filter)."""
  n = noise.shape[-1]
  rows, cols = xp.meshgrid(xp.arange(h, dtype=xp.float32), xp.arange(w, dtype=xp.float32),
                           indexing="ij")
  at = [rows * (n - 1) / max(h - 1, 1), cols * (n - 1) / max(w - 1, 1)]
  disp = xp.stack([map_coordinates(alpha * noise[k], at, order=1, mode="nearest")
                   for k in range(2)])
  return xp.stack([rows, cols]) + disp


def grid_distortion_field(steps, h: int, w: int, xp=np):
  """Albumentations-style grid distortion: each of n cells per axis is stretched by 1 + s
  (`steps` [2, n], s within +-limit); a pixel's source row (col) follows the stretched grid by
  piecewise-linear interpolation. Separable, so the field is two 1-D maps."""
  out = []
  for axis, size in enumerate((h, w)):
    cells = 1 + steps[axis]
    knots_src = xp.concatenate([xp.zeros(1), xp.cumsum(cells)]) / xp.sum(cells) * (size - 1)
    knots_out = xp.linspace(0, size - 1, steps.shape[-1] + 1)
    out.append(xp.interp(xp.arange(size, dtype=xp.float32), knots_out, knots_src))
  rows, cols = xp.meshgrid(out[0], out[1], indexing="ij")
  return xp.stack([rows, cols]).astype(xp.float32)


def warp_field_host(array: np.ndarray, src: np.ndarray, nearest: bool) -> np.ndarray:
  """[H, W, C] or [D, H, W, C] sampled at src [2, H, W] (per slice for volumes); zeros outside."""
  from scipy import ndimage
  flat = array.reshape((-1,) + array.shape[-3:]) if array.ndim == 4 else array[None]
  out = np.empty_like(flat)
  for d in range(flat.shape[0]):
    for c in range(flat.shape[-1]):
      out[d, ..., c] = ndimage.map_coordinates(flat[d, ..., c], src, order=0 if nearest else 1,
                                               mode="grid-constant", cval=0.0, prefilter=False)
  return out.reshape(array.shape)


def warp_field_device(array, src, nearest: bool):
  """The same in jax for one [H, W, C] image (vmap it over a batch)."""
  import jax
  order = 0 if nearest else 1
  warp = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src[0], src[1]], order=order,  # noqa: E731
                                                      mode="constant", cval=0.0)
  return jax.vmap(warp, in_axes=-1, out_axes=-1)(array)
