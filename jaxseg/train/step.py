"""The jitted train and eval steps: pure functions of (state, batch, running sums).

Nothing here talks to the host. The train step adds its loss and counts into a small
accumulator pytree that stays on the device; the loop reads it once per log interval.
"""

import jax
import jax.numpy as jnp
import optax

from jaxseg import losses, metrics


def _variables(state, params):
  v = {"params": params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def zero_accumulator(num_channels: int) -> dict:
  return {"loss_sum": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.int32),
          "counts": jnp.zeros((num_channels, 3), jnp.float32),
          # first step whose loss was not finite, -1 while none was
          "nonfinite_step": jnp.full((), -1, jnp.int32)}


def make_train_step(model, tx, task: str, loss_cfg, threshold: float):
  def train_step(state, batch, acc):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(params):
      logits, updates = model.apply(_variables(state, params), batch["image"], train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
      return losses.seg_loss(logits, batch["mask"], task, loss_cfg), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, deltas),
                              batch_stats=updates.get("batch_stats", state.batch_stats),
                              opt_state=opt_state)
    counts = metrics.confusion(jax.lax.stop_gradient(logits), batch["mask"], task, threshold)
    finite = jnp.isfinite(loss)
    acc = {"loss_sum": acc["loss_sum"] + loss, "steps": acc["steps"] + 1,
           "counts": acc["counts"] + counts.sum(0),
           "nonfinite_step": jnp.where((acc["nonfinite_step"] < 0) & ~finite, state.step,
                                       acc["nonfinite_step"])}
    return new_state, acc

  return train_step


def make_eval_step(model, task: str, loss_cfg, threshold: float):
  def eval_step(state, batch):
    """Per-example counts [B, K, 3] (zero on padding rows) and the summed loss."""
    logits = model.apply(_variables(state, state.params), batch["image"], train=False)
    valid = batch["valid"]
    counts = metrics.confusion(logits, batch["mask"], task, threshold)
    counts = counts * valid[:, None, None]
    loss_sum = losses.seg_loss(logits, batch["mask"], task, loss_cfg, weight=valid) * valid.sum()
    return counts, loss_sum

  return eval_step


def make_predict_fn(model, task: str):
  def predict(state, images):
    logits = model.apply(_variables(state, state.params), images, train=False)
    return losses.probabilities(logits, task)

  return predict
