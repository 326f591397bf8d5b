"""Max-pooling with a cheap gradient (batch norm followed by max-pooling as one op:
jaxseg.models.batch_norm).

Both route a window's gradient to its first maximum in row-major order, as nn.max_pool and torch
do. The forward passes are XLA reduce-windows; the backward passes compare each of the window's
strided views with the pooled value and interleave the views back to full resolution.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models.conv import window_views


def _pool_views(x, window: int):
  """The window^nd strided views of x, one per offset inside the window (row-major), each of the
  pooled output's shape; a ragged edge is dropped."""
  nd = x.ndim - 2
  sizes = [n // window for n in x.shape[1:-1]]
  return [view for _, view in window_views(x, (window,) * nd, sizes, (window,) * nd)]


def _interleave(parts, window: int):
  """The inverse of `_pool_views`: window^nd arrays [B, *sizes, C] (row-major offsets) -> one
  [B, *sizes * window, C]."""
  nd = parts[0].ndim - 2
  b, *sizes, c = parts[0].shape
  # [B, *sizes, window^nd, C] -> [B, n0, w, n1, w, ..., C] -> [B, *sizes * window, C]
  x = jnp.stack(parts, axis=-2).reshape(b, *sizes, *(window,) * nd, c)
  perm = [0] + [p for i in range(nd) for p in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
  return x.transpose(perm).reshape(b, *[n * window for n in sizes], c)


def _first_hits(x, y, window: int):
  """Per window view of x, where it holds the window's value y for the first time (row-major)."""
  taken, hits = None, []
  for view in _pool_views(x, window):
    hit = view == y if taken is None else (view == y) & ~taken
    taken = hit if taken is None else taken | hit
    hits.append((view, hit))
  return hits


def _pool(x, window: int):
  # VALID with the stride equal to the window drops a ragged edge.
  dims = (1,) + (window,) * (x.ndim - 2) + (1,)
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, dims, dims, "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, window: int = 2):
  """Non-overlapping max-pool (VALID: a ragged edge is dropped), the same values and gradient
  as flax's nn.max_pool: the gradient goes to the first maximum of each window in row-major
  order, as in torch. The backward pass is a chain of compares and selects, because XLA's CPU
  backend runs nn.max_pool's select-and-scatter gradient far slower (8 x 128^2 x 16, forward +
  backward: 25.8 against 1.2 ms, 2026-11-26), and autodiff through a reshape + max adds a tie
  count and a division (BUILD.md performance notes). The forward pass is XLA's reduce-window,
  which XLA computes once and keeps: written as an element-wise max of strided views, it was
  fused, with the batch norm before it, into each of its consumers, among them the batch-minor
  copy XLA's CPU backend makes for the next convolution's weight gradient (14-15 ms of UNeXt's
  256 px step for one 8 MB copy, 2026-11-26)."""
  return _pool(x, window)


def _max_pool_fwd(x, window):
  y = _pool(x, window)
  return y, (x, y)


def _max_pool_bwd(window, residuals, g):
  x, y = residuals
  dx = _interleave([jnp.where(hit, g, jnp.zeros_like(g)) for _, hit in _first_hits(x, y, window)],
                   window)
  ragged = [(0, full - n) for full, n in zip(x.shape[1:-1], dx.shape[1:-1], strict=True)]
  return (jnp.pad(dx, [(0, 0)] + ragged + [(0, 0)]),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
