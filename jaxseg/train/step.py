"""The jitted train and eval steps: pure functions of (state, batch, running sums).

Nothing here talks to the host. The train step adds its loss and counts into a small
accumulator pytree that stays on the device; the loop reads it once per log interval.
"""

import jax
import jax.numpy as jnp
import optax

from jaxseg import hardware, losses, metrics, models
from jaxseg.data import geometry, transforms


def _variables(batch_stats, params):
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def zero_accumulator(num_channels: int) -> dict:
  return {"loss_sum": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.int32),
          "counts": jnp.zeros((num_channels, 3), jnp.float32),
          "skipped": jnp.zeros((), jnp.int32),
          # first step whose loss was not finite, -1 while none was
          "nonfinite_step": jnp.full((), -1, jnp.int32)}


def micro_batches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] with micro-batch i = rows i, i+n, i+2n, ...

  Strided rather than contiguous so that each device keeps its own rows: with the batch sharded
  in contiguous blocks over devices, every micro-batch then has rows on every device.
  """
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"batch of {x.shape[0]} does not split into {n} micro-batches")
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def device_inputs(batch: dict, zscore: bool) -> dict:
  """The batch as the model and loss take it: float32 images (z-scored here when the loader left
  it to the device, jaxseg.data.pipeline.zscore_on_device) and float32 masks (uint8 in transit)."""
  image = batch["image"]
  image = transforms.normalize_device(image) if zscore else image.astype(jnp.float32)
  return {**batch, "image": image, "mask": batch["mask"].astype(jnp.float32)}


def device_augment(batch: dict, rng, aug) -> dict:
  """data.augment on the device, per example, the twins of the host transforms: shift-scale-
  rotate (probability aug.ssr), one of {elastic, grid distortion} (aug.elastic_or_grid), one of
  {Gaussian noise, Gaussian blur} (aug.noise_or_blur). Volumes [B, D, H, W, C] get the same
  in-plane warp on every slice, as on the host."""
  image, mask = batch["image"], batch["mask"]
  volume = image.ndim == 5
  h, w = image.shape[-3:-1]
  n = image.shape[0]
  keys = jax.random.split(rng, 5)
  u = jax.random.uniform(keys[0], (n, 5))
  # v: elastic-or-grid apply, which of the two, noise-or-blur apply, which of the two, blur sigma
  v = jax.random.uniform(keys[1], (n, 5))
  noise = jax.random.normal(keys[2], (n, 2, aug.elastic_control, aug.elastic_control))
  steps = jax.random.uniform(keys[3], (n, 2, aug.grid_cells), minval=-aug.grid_limit,
                             maxval=aug.grid_limit)
  pixel_noise = keys[4]

  def warp(x, src, nearest, apply):
    one = lambda s: geometry.warp_field_device(s, src, nearest)  # noqa: E731
    return jnp.where(apply, jax.vmap(one)(x) if volume else one(x), x)

  def one(image, mask, u, v, noise, steps, key):
    if aug.ssr:
      m, offset = geometry.ssr_params(u[:4], h, w, aug.ssr_shift, aug.ssr_scale,
                                      aug.ssr_rotate, xp=jnp)
      src = geometry.affine_field(m, offset, h, w)
      image, mask = warp(image, src, False, u[4] < aug.ssr), warp(mask, src, True, u[4] < aug.ssr)
    if aug.elastic_or_grid:
      elastic = geometry.elastic_field(noise, h, w, aug.elastic_alpha,
                                       jax.scipy.ndimage.map_coordinates, xp=jnp)
      grid = geometry.grid_distortion_field(steps, h, w, xp=jnp)
      src = jnp.where(v[1] < 0.5, elastic, grid)
      apply = v[0] < aug.elastic_or_grid
      image, mask = warp(image, src, False, apply), warp(mask, src, True, apply)
    if aug.noise_or_blur:
      noisy = image + aug.noise_std * jax.random.normal(key, image.shape, image.dtype)
      sigma = aug.blur_sigma / 4 + v[4] * (aug.blur_sigma - aug.blur_sigma / 4)
      blur = lambda x: transforms.gaussian_blur_device(x, sigma, aug.blur_sigma)  # noqa: E731
      blurred = jax.vmap(blur)(image) if volume else blur(image)
      image = jnp.where(v[2] < aug.noise_or_blur, jnp.where(v[3] < 0.5, noisy, blurred), image)
    return image, mask

  image, mask = jax.vmap(one)(image, mask, u, v, noise, steps, jax.random.split(pixel_noise, n))
  return {**batch, "image": image, "mask": mask}


def make_train_step(model, tx, task: str, loss_cfg, threshold: float, accum_steps: int = 1,
                    skip_nonfinite: bool = False, frozen_params=None, frozen_stats=None,
                    device_aug=None, zscore: bool = False):
  """The train step. With accum_steps > 1 the batch is split into micro-batches whose gradients
  are averaged before one optimizer update (BatchNorm then sees micro-batch statistics, as in
  PyTorch). With skip_nonfinite a step whose loss or gradients are not finite leaves the state
  unchanged (and is counted) instead of poisoning it. `frozen_params` (a params-shaped tree of
  Python bools) takes no gradient for frozen layers (models.without_gradient): the backward pass
  leaves out their weight gradients, and with a frozen prefix its input gradients too; their
  gradients are zeros, and the optimizer (state.make_optimizer) does not move them either way.
  `frozen_stats` (batch_stats-shaped) keeps the statistics of frozen layers as they were.
  `device_aug` (the data.augment config) runs shift-scale-rotate inside the step. `zscore`: the
  batch's images arrive un-normalised (see device_inputs)."""

  def grads_and_stats(params, batch_stats, batch, rng):
    def loss_fn(params):
      if frozen_params is not None:
        params = models.without_gradient(params, frozen_params)
      logits, updates = model.apply(_variables(batch_stats, params), batch["image"], train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
      return losses.seg_loss(logits, batch["mask"], task, loss_cfg), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    counts = metrics.confusion(jax.lax.stop_gradient(logits), batch["mask"], task, threshold)
    return loss, grads, updates.get("batch_stats", batch_stats), counts.sum(0)

  def train_step(state, batch, acc):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    batch = device_inputs(batch, zscore)
    if device_aug is not None:
      batch = device_augment(batch, jax.random.fold_in(rng, 1 << 30), device_aug)
    if accum_steps == 1:
      loss, grads, batch_stats, counts = grads_and_stats(state.params, state.batch_stats,
                                                         batch, rng)
    else:
      def body(carry, xs):
        grads_sum, loss_sum, counts_sum, stats = carry
        i, micro = xs
        loss, grads, stats, counts = grads_and_stats(state.params, stats, micro,
                                                     jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss,
                counts_sum + counts, stats), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      init = (zeros, jnp.zeros((), jnp.float32), acc["counts"] * 0, state.batch_stats)
      # XLA's CPU backend runs convolutions inside a loop body ~40x slower (UNet 128 px, batch
      # 8, 2 micro-batches: 25.6 s vs 0.62 s per step, 2026-11-26), so on CPU the loop is
      # unrolled, which there saves no memory either; accelerators keep the loop, whose point
      # is holding one micro-batch's activations at a time.
      (grads, loss, counts, batch_stats), _ = jax.lax.scan(
          body, init, (jnp.arange(accum_steps), micro_batches(batch, accum_steps)),
          unroll=hardware.cpu_backend())
      grads = jax.tree.map(lambda g: g / accum_steps, grads)
      loss = loss / accum_steps

    if frozen_stats is not None:
      batch_stats = jax.tree.map(lambda frozen, new, old: old if frozen else new,
                                 frozen_stats, batch_stats, state.batch_stats)
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, deltas),
                              batch_stats=batch_stats, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    if skip_nonfinite:
      kept = state.replace(step=state.step + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    acc = {"loss_sum": acc["loss_sum"] + jnp.where(finite, loss, 0.0),
           "steps": acc["steps"] + finite.astype(jnp.int32),
           "counts": acc["counts"] + counts,
           "skipped": acc["skipped"] + (~finite).astype(jnp.int32),
           "nonfinite_step": jnp.where((acc["nonfinite_step"] < 0) & ~finite, state.step,
                                       acc["nonfinite_step"])}
    return new_state, acc

  return train_step


def make_eval_step(model, task: str, loss_cfg, threshold: float, zscore: bool = False):
  def eval_step(state, batch):
    """Per-example counts [B, K, 3] (zero on padding rows) and the summed loss."""
    batch = device_inputs(batch, zscore)
    logits = model.apply(_variables(state.batch_stats, state.params), batch["image"], train=False)
    valid = batch["valid"]
    counts = metrics.confusion(logits, batch["mask"], task, threshold)
    counts = counts * valid[:, None, None]
    loss_sum = losses.seg_loss(logits, batch["mask"], task, loss_cfg, weight=valid) * valid.sum()
    return counts, loss_sum

  return eval_step


def make_predict_fn(model, task: str):
  def predict(state, images):
    logits = model.apply(_variables(state.batch_stats, state.params), images, train=False)
    return losses.probabilities(logits, task)

  return predict
