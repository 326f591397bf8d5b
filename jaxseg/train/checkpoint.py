"""The one place that talks to Orbax (its API still moves).

A checkpoint holds the train state (params, batch stats, optimizer state, step, RNG) and the
Grain iterator state, so a resumed run continues the same sample order. Kept: the latest
`keep` checkpoints plus the best by validation Dice. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so one cut short by a crash is never "latest".
"""

import os

import jax
import orbax.checkpoint as ocp

BEST_METRIC = "val_dice"


class Checkpoints:
  def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
    policies = ocp.checkpoint_managers
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        read_only=read_only,
        enable_async_checkpointing=True,
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                           keep_checkpoints_without_metrics=False),
        ]),
    )
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  def latest_step(self):
    return self._manager.latest_step()

  def best_step(self):
    return self._manager.best_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, metrics: dict | None = None):
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state):
    """Returns (state, data_state) of `step`, placed like `abstract_state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def read(self, step: int):
    """(state as nested dicts of arrays on one local device; data_state), needing no target.

    Works whatever topology the checkpoint was saved with (8 GPUs, a pod slice...).
    """
    meta = self._manager.item_metadata(step)["state"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return out["state"], out["data"]

  def resolve(self, which: str) -> int:
    """'latest', 'best' (falls back to latest) or a step number -> a saved step."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    if which == "latest":
      return self.latest_step()
    if which == "best":
      best = self.best_step()
      return self.latest_step() if best is None else best
    if int(which) not in steps:
      raise FileNotFoundError(f"{self.directory}: no checkpoint at step {which}; have {steps}")
    return int(which)

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
