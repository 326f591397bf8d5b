"""Convolution with a choice of weight-gradient algorithm (`model.conv_impl`), and the CPU forms
XLA's CPU backend runs faster than its own: 3-D convolutions as sums of 2-D ones (`conv_nd`),
depthwise convolutions as shifted sums (`depthwise_conv`) and the 1x1 head's weight gradient as
one reduction (`pointwise_conv`).

With `impl="onednn"` the float32 convolutions run on CPUs as oneDNN's, and the bfloat16 ones
on CPUs with bfloat16 instructions (jaxseg.models.onednn: a compiled extension; grouped ones
stay XLA's). `impl="auto"`, the default, is "onednn"
where oneDNN can run and "xla" where it cannot (or on other backends).

With `impl="patches"` the forward pass and the input gradient stay XLA convolutions and the
weight gradient becomes one large matmul of the input's patches (im2col, built by slicing) with
the output gradient. Measured on this project's 2-core CPU (2026-11-25, BUILD.md performance
notes) it is slower than XLA's own weight gradient for the UNet step (1.50 -> 1.85 s at 128 px,
3x the memory): the patches cost more memory traffic than the faster matmul saves. It is kept
opt-in, off by default, for machines where that balance differs; the gradient is tested equal to
XLA's.
"""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.hardware import cpu_backend
from jaxseg.models import native_sums, onednn

IMPLS = ("auto", "xla", "patches", "onednn")


def _dimension_numbers(nd: int):
  return ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")


def _conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=_dimension_numbers(x.ndim - 2))


def conv_nd(x, w, strides, padding, conv2d=None):
  """XLA's convolution, except a stride-1 3-D convolution on CPU: there it is the sum over the
  kernel's depth taps of 2-D convolutions with depth folded into the batch, 2.5-4x faster
  forward + backward than XLA CPU's own 3-D convolution (BUILD.md performance notes). Those
  2-D convolutions are `conv2d(x, w, strides, padding)`'s, XLA's by default."""
  if x.ndim != 5 or any(s != 1 for s in strides) or not cpu_backend():
    return _conv(x, w, strides, padding)
  return conv3d_as_2d(x, w, padding, conv2d or _conv)


def conv3d_as_2d(x, w, padding, conv2d=_conv):
  (lo, hi), *plane_padding = padding
  xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
  n, _, h, wd, c = x.shape
  depth = xp.shape[1] - w.shape[0] + 1
  out = None
  for tap in range(w.shape[0]):
    planes = lax.slice_in_dim(xp, tap, tap + depth, axis=1).reshape(n * depth, h, wd, c)
    y = conv2d(planes, w[tap], (1, 1), tuple(plane_padding))
    out = y if out is None else out + y
  return out.reshape(n, depth, *out.shape[1:])


def window_views(x, window, out, strides):
  """(offset, view) for each offset inside a kernel window, in the kernel's (row-major) order:
  the strided view of x (channels last) that the tap at that offset reads for each of the `out`
  output positions. The taps of the shifted depthwise conv, of the im2col weight gradient and of
  max-pooling (pooling.max_pool)."""
  for offset in itertools.product(*[range(k) for k in window]):
    start = (0, *offset, 0)
    stop = (x.shape[0], *[o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides,
                                                                strict=True)], x.shape[-1])
    yield offset, lax.slice(x, start, stop, (1, *strides, 1))


def _autodiff_input_gradient(op):
  def input_gradient(x, w, g, strides, padding):
    _, input_vjp = jax.vjp(lambda x: op(x, w, strides, padding), x)
    return input_vjp(g)[0]
  return input_gradient


def with_weight_gradient(op, weight_gradient, input_gradient=None):
  """op(x, w, strides, padding) with a hand-written weight gradient,
  weight_gradient(x, w, g, strides, padding), and JAX's input gradient unless `input_gradient`
  (same signature) is given; the forward pass keeps only x and w. The one mechanism behind the
  im2col convolution, the shifted depthwise convolution and the pointwise head below."""
  input_gradient = input_gradient or _autodiff_input_gradient(op)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def f(x, w, strides, padding):
    return op(x, w, strides, padding)

  def fwd(x, w, strides, padding):
    return op(x, w, strides, padding), (x, w)

  def bwd(strides, padding, residuals, g):
    x, w = residuals
    return (input_gradient(x, w, g, strides, padding),
            weight_gradient(x, w, g, strides, padding))

  f.defvjp(fwd, bwd)
  return f


def _patches_weight_gradient(x, w, g, strides, padding):
  *window, cin, cout = w.shape
  if any(s != 1 for s in strides):
    _, weight_vjp = jax.vjp(lambda w: _conv(x, w, strides, padding), w)
    return weight_vjp(g)[0]
  # im2col by slicing: one shifted view of the padded input per kernel tap, side by side.
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  taps = [view for _, view in window_views(xp, window, g.shape[1:-1], strides)]
  patches = jnp.concatenate(taps, axis=-1)  # features ordered (*window, input channel)
  dw = lax.dot_general(patches.reshape(-1, patches.shape[-1]), g.reshape(-1, cout),
                       (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  return dw.reshape(*window, cin, cout).astype(w.dtype)


# lax.conv_general_dilated (channels last) whose weight gradient is an im2col matmul.
conv_patch_grad = with_weight_gradient(_conv, _patches_weight_gradient)


@jax.custom_vjp
def add_bias(y, bias):
  """y + bias (per channel, channels last) in y's dtype. The bias's gradient, the output
  gradient summed per channel, is native_sums.channel_sums: on CPUs one float32 pass over a
  bfloat16 gradient, where XLA's CPU backend first wrote the whole gradient out again in float32,
  then reduced it (a UNeXt's last decoder conv, 256 px: 7 ms of a 222 ms step)."""
  return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), bias


def _add_bias_bwd(bias, g):
  return g, native_sums.channel_sums(g).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


class Conv(nn.Module):
  """Stride-s convolution ('SAME', or `padding` on each side) with Flax nn.Conv's parameters
  (kernel, bias; same names, shapes and initialisers, so checkpoints do not depend on `impl`).
  With `return_bias` it returns (output without the bias, bias): for a norm after it that can
  use the bias better (layers.Norm's `offset`)."""

  features: int
  kernel: int = 3
  strides: int = 1
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  impl: str = "auto"
  return_bias: bool = False
  padding: int | None = None  # each side (torch's symmetric padding); None: Flax's "SAME"

  @nn.compact
  def __call__(self, x):
    nd = x.ndim - 2
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel,) * nd + (x.shape[-1], self.features), jnp.float32)
    # Flax's SAME padding: total k - 1 for stride 1; for stride s, enough to cover ceil(n / s).
    pads = []
    for n in x.shape[1:-1]:
      out = -(-n // self.strides)
      total = max((out - 1) * self.strides + self.kernel - n, 0)
      pads.append((total // 2, total - total // 2) if self.padding is None
                  else (self.padding, self.padding))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    strides = (self.strides,) * nd
    if self.impl == "patches":
      y = conv_patch_grad(x, kernel, strides, tuple(pads))
    elif self.impl in ("onednn", "auto"):
      # oneDNN's 2-D convolutions also inside the 3-D ones that conv_nd splits into them.
      conv2d = functools.partial(onednn.conv, fallback=_conv, required=self.impl == "onednn")
      y = conv2d(x, kernel, strides, tuple(pads),
                 fallback=functools.partial(conv_nd, conv2d=conv2d))
    elif self.impl == "xla":
      y = conv_nd(x, kernel, strides, tuple(pads))
    else:
      raise ValueError(f"model.conv_impl={self.impl!r}; known: {IMPLS}")
    if not self.use_bias:
      return y
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return (y, bias) if self.return_bias else add_bias(y, bias)


def depthwise_conv(x, kernel, strides, padding, impl: str = "auto"):
  """Depthwise convolution, channels last: kernel (*window, 1, C), explicit (lo, hi) pads.

  impl "shift" sums the kernel taps over strided shifted views of the padded input: one fused
  element-wise loop forward. XLA's CPU backend runs the same layer as a grouped convolution
  20-45x slower forward and 2.6-16x slower forward + backward (BUILD.md performance notes);
  "auto" picks "shift" on CPU and XLA's convolution elsewhere, where that convolution is a
  tuned library call. Accumulates in float32.
  """
  if impl == "auto":
    impl = "shift" if cpu_backend() else "xla"
  if impl == "xla":
    nd = x.ndim - 2
    return lax.conv_general_dilated(x, kernel, strides, padding,
                                    dimension_numbers=_dimension_numbers(nd),
                                    feature_group_count=x.shape[-1],
                                    preferred_element_type=jnp.float32).astype(x.dtype)
  if impl != "shift":
    raise ValueError(f"depthwise impl={impl!r}; known: auto, shift, xla")
  return _shifted_depthwise(x, kernel, tuple(strides), tuple(map(tuple, padding)))


def _shifted_sum(x, kernel, strides, padding):
  *window, _, channels = kernel.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:-1], window, strides, strict=True)]
  acc = jnp.zeros((x.shape[0], *out, channels), jnp.float32)
  for offset, tap in window_views(xp, window, out, strides):
    acc = acc + (tap * kernel[offset][0]).astype(jnp.float32)
  return acc.astype(x.dtype)


def _depthwise_kernel_gradient(x, kernel, g, strides, padding):
  """Differentiated by JAX, the kernel gradient of the shifted sum is one reduction per tap over
  a materialised zero-bordered shifted copy of the input (the forward pass keeps those copies
  for it), and that cost up to 20x the forward pass on CPU. Here the tap products are summed
  together by variadic reductions, which XLA emits as single passes. UNet++ / EfficientNet-B3
  (224 px, batch 8): step 2565 -> 2072 ms; step memory 2486 -> 1584 MB at batch 4 (BUILD.md
  performance notes)."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  g32 = g.astype(jnp.float32)
  products = tuple(tap.astype(jnp.float32) * g32
                   for _, tap in window_views(xp, kernel.shape[:-2], g.shape[1:-1], strides))
  # Rows first, then the rest: shorter running sums than one pass over batch x space (float32
  # error 6e-7 instead of 8e-6 of the largest entry at 4 x 112² x 144), and faster.
  rows = _sum_together(products, (x.ndim - 2,))
  sums = _sum_together(rows, tuple(range(x.ndim - 2)))
  return jnp.stack(sums).reshape(kernel.shape).astype(kernel.dtype)


def _sum_together(arrays, axes):
  """Sums of several same-shaped arrays over `axes` as one variadic reduction: one pass that
  reads them all, where separate reductions cost XLA's CPU backend far more."""
  return lax.reduce(tuple(arrays), (jnp.float32(0),) * len(arrays),
                    lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), axes)


def _depthwise_input_gradient(x, kernel, g, strides, padding):
  """At stride 1 (and padding narrower than the kernel), the shifted sum of the output gradient
  with the kernel flipped (a correlation's transpose is the flipped correlation): one fused
  loop. Otherwise JAX's derivative, which materialises one zero-bordered copy of g per tap and
  adds them up: in UNeXt's deepest decoder block, 8 x 32^2 x 128, that sum took 11 ms of the
  256 px step (2026-11-26)."""
  window = kernel.shape[:-2]
  if any(s != 1 for s in strides) or any(max(p) > k - 1 for k, p in zip(window, padding,
                                                                          strict=True)):
    return _autodiff_input_gradient(_shifted_sum)(x, kernel, g, strides, padding)
  flipped = kernel[(slice(None, None, -1),) * len(window)]
  pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(window, padding, strict=True))
  return _shifted_sum(g, flipped, strides, pads).astype(x.dtype)


_shifted_depthwise = with_weight_gradient(_shifted_sum, _depthwise_kernel_gradient,
                                          _depthwise_input_gradient)


def _pointwise_kernel_gradient(x, kernel, g, strides, padding):
  """Per output channel k, the sum over pixels of x * g[..., k], all in one variadic reduction
  that reads x as it lies. For a network's head (a few output channels) this replaces XLA CPU's
  convolution weight gradient, which first copies the full-resolution input into a batch-minor
  layout, recomputing whatever produced it in that copy's order: UNeXt's head, 8 x 256^2 x 16
  -> 1, 12.3 against 3.9 ms (with a ReLU before it, 2026-11-26)."""
  g32 = g.astype(jnp.float32)
  products = tuple(x.astype(jnp.float32) * g32[..., k:k + 1] for k in range(g.shape[-1]))
  sums = _sum_together(products, tuple(range(x.ndim - 1)))  # each [C_in]
  return jnp.stack(sums, -1).reshape(kernel.shape).astype(kernel.dtype)


_pointwise_reduced = with_weight_gradient(conv_nd, _pointwise_kernel_gradient)


def pointwise_conv(x, kernel):
  """1x1 (1x1x1) convolution, channels last, kernel (*ones, C_in, C_out), no bias. On CPU its
  weight gradient is `_pointwise_kernel_gradient`, meant for few output channels (the heads);
  elsewhere XLA's convolution, a library call."""
  nd = x.ndim - 2
  op = _pointwise_reduced if cpu_backend() else conv_nd
  return op(x, kernel, (1,) * nd, ((0, 0),) * nd)


class DepthwiseConv(nn.Module):
  """Drop-in for nn.Conv(C, window, feature_group_count=C, padding=symmetric pad): the same
  parameter names, shapes and initialisers, computed by `depthwise_conv`."""

  kernel_size: tuple
  strides: int = 1
  padding: int = 0  # each side
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    nd, channels = x.ndim - 2, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, 1, channels), jnp.float32)
    y = depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), (self.strides,) * nd,
                       ((self.padding, self.padding),) * nd, self.impl)
    if self.use_bias:
      y = add_bias(y, self.param("bias", nn.initializers.zeros, (channels,), jnp.float32))
    return y
