"""What train, evaluate, predict and bench share: model, mesh, optimizer, compiled steps, restore.

Built once from the config; every command then works on the same compiled functions and the same
resume order: the workdir's checkpoint, else `config.init_from`, else a fresh initialisation.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import hardware, models
from jaxseg.data import pipeline
from jaxseg.metrics import summarize
from jaxseg.models import pretrained
from jaxseg.train import parallel
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib
from jaxseg.train.checkpoint import Checkpoints


class Experiment:
  def __init__(self, config, workdir: str, total_steps: int | None = None):
    self.config = config
    self.workdir = workdir
    d = config.data
    if d.task not in ("binary", "multilabel", "multiclass"):
      raise ValueError(f"data.task={d.task!r}; known: binary, multilabel, multiclass")
    if not d.image_size:
      raise ValueError("data.image_size must be set (> 0): batches need one fixed shape")
    # [D, H, W, C] volumes when data.depth > 0, else [H, W, C] images; training patches when
    # data.patch is set (evaluation then sees whole samples, per-case through sliding windows).
    self.input_shape = ((d.depth,) if d.depth else ()) + (d.image_size, d.image_size,
                                                           d.in_channels)
    if d.patch:
      if len(d.patch) != len(self.input_shape) - 1:
        raise ValueError(f"data.patch={tuple(d.patch)} needs one size per spatial axis of "
                         f"{self.input_shape[:-1]}")
      self.input_shape = tuple(d.patch) + (d.in_channels,)
    self.mesh = parallel.make_mesh(config.mesh)
    self.replicated = parallel.replicated(self.mesh)
    self.batch_sharding = parallel.batch_sharding(self.mesh)
    self.model = models.build(config.model, d.in_channels, d.num_classes)
    self.total_steps = total_steps or config.train.steps
    shapes = models.variable_shapes(self.model, self.input_shape)
    self.frozen_params = frozen_params = models.frozen_mask(config.model, shapes["params"])
    frozen_stats = models.frozen_mask(config.model, shapes.get("batch_stats", {}))
    self.tx = state_lib.make_optimizer(config.optim, self.total_steps, frozen_params)
    self.lr_schedule = state_lib.learning_rate_schedule(config.optim, self.total_steps)
    thr, tc = config.train.threshold, config.train
    if tc.nan_policy not in ("stop", "skip"):
      raise ValueError(f"train.nan_policy={tc.nan_policy!r}; known: stop, skip")
    per_device = d.batch_size // self.mesh.shape[parallel.DATA_AXIS]
    if d.batch_size % self.mesh.shape[parallel.DATA_AXIS] or per_device % tc.grad_accum:
      raise ValueError(f"data.batch_size={d.batch_size} must split over "
                       f"{self.mesh.shape[parallel.DATA_AXIS]} devices x train.grad_accum="
                       f"{tc.grad_accum} micro-batches")
    r, b = self.replicated, self.batch_sharding
    zscore = pipeline.zscore_on_device(d)
    self.train_step = jax.jit(
        step_lib.make_train_step(self.model, self.tx, d.task, config.loss, thr,
                                 accum_steps=tc.grad_accum,
                                 skip_nonfinite=tc.nan_policy == "skip",
                                 frozen_params=frozen_params, frozen_stats=frozen_stats,
                                 device_aug=pipeline.device_augment_config(d.augment),
                                 zscore=zscore),
        in_shardings=(r, b, r), out_shardings=(r, r), donate_argnums=(0, 2))
    self.eval_step = jax.jit(step_lib.make_eval_step(self.model, d.task, config.loss, thr, zscore),
                             in_shardings=(r, b), out_shardings=(b, r))
    self.predict_fn = jax.jit(step_lib.make_predict_fn(self.model, d.task),
                              in_shardings=(r, b), out_shardings=b)
    self.checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"),
                                   keep=config.train.keep_checkpoints) if workdir else None

  # ---- state -------------------------------------------------------------------------------
  def init_state(self):
    return state_lib.create_state(self.model, self.tx, self.input_shape, self.config.seed,
                                  self.replicated, self.config.model.kernel_init)

  def restore_or_init(self, which: str = "latest"):
    """(state, data_state or None, where it came from)."""
    state = self.init_state()
    if self.checkpoints and self.checkpoints.all_steps():
      step = self.checkpoints.resolve(which)
      state, data_state = self.checkpoints.restore(step, state)
      return state, data_state, f"checkpoint step {step}"
    if self.config.init_from:
      return self._load_weights(state, self.config.init_from), None, self.config.init_from
    if self.config.model.pretrained:
      if self.config.model.name not in models.ENCODER_OF:
        raise ValueError(f"model.pretrained needs an encoder model ({', '.join(models.ENCODER_OF)})"
                         f", not {self.config.model.name!r}")
      encoder = models.ENCODERS[models.ENCODER_OF[self.config.model.name]]
      params, stats = pretrained.load_encoder(self.config.model.pretrained,
                                              parallel.to_host(state.params),
                                              parallel.to_host(state.batch_stats),
                                              ignored=encoder.IGNORED)
      state = state.replace(params=jax.device_put(params, self.replicated),
                            batch_stats=jax.device_put(stats, self.replicated))
      return state, None, f"scratch with encoder weights {self.config.model.pretrained}"
    return state, None, "scratch"

  def _load_weights(self, state, path: str):
    """Params and batch statistics (not optimizer state or step) from another run, which may
    have frozen other layers (a different optimizer state) or run on other devices."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):  # a run's workdir
      path = os.path.join(path, "checkpoints")
    if os.path.basename(path).isdigit():
      other, step = Checkpoints(os.path.dirname(path), read_only=True), int(os.path.basename(path))
    else:
      other = Checkpoints(path, read_only=True)
      step = other.resolve("best")
    saved, _ = other.read(step)
    weights = {"params": saved["params"], "batch_stats": saved.get("batch_stats", {})}
    want = {"params": state.params, "batch_stats": state.batch_stats}
    shape = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)  # noqa: E731
    if shape(weights) != shape(want):
      raise ValueError(f"init_from={path} (step {step}): its parameters do not fit model "
                       f"{self.config.model.name!r} as configured")
    weights = jax.device_put(weights, self.replicated)
    return state.replace(params=weights["params"], batch_stats=weights["batch_stats"])

  # ---- data --------------------------------------------------------------------------------
  def sources(self) -> dict:
    source = pipeline.build_source(self.config.data, self.workdir)
    return pipeline.split_sources(source, self.config.data, self.workdir)

  def to_device(self, batch: dict) -> dict:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

  def abstract_batch(self, image_dtype=jnp.float32) -> dict:
    """The training batch's shapes and dtypes (images arrive as the loader gives them: float32,
    or uint8 from a uint8 source whose z-score runs on the device; masks uint8)."""
    bs = self.config.data.batch_size
    # Multi-class masks are integer labels with a trailing axis, others one channel per class.
    k = 1 if self.config.data.task == "multiclass" else self.config.data.num_classes
    mask_shape = (bs, *self.input_shape[:-1], k)
    mk = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=self.batch_sharding)  # noqa: E731
    return {"image": mk((bs, *self.input_shape), image_dtype), "mask": mk(mask_shape, jnp.uint8)}

  def compile_train_step(self, state, acc, image_dtype=jnp.float32):
    """Ahead-of-time compile for batches with `image_dtype` images; returns (compiled, seconds,
    model FLOPs per step: three forward passes over the global batch, jaxseg.hardware's
    convention, less the backward work frozen layers leave out)."""
    t0 = time.perf_counter()
    compiled = self.train_step.lower(state, self.abstract_batch(image_dtype), acc).compile()
    seconds = time.perf_counter() - t0
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    per_example = (hardware.TRAIN_STEP_FORWARDS
                   * models.forward_flops(self.model, variables, self.input_shape)
                   - models.frozen_backward_flops(self.model, variables, self.input_shape,
                                                  self.frozen_params))
    return compiled, seconds, per_example * self.config.data.batch_size

  # ---- evaluation --------------------------------------------------------------------------
  def evaluate(self, state, source) -> dict:
    """Dice / IoU (global, per image, per case) and mean loss over one split ({} if empty)."""
    if len(source) == 0:
      return {}
    case_ids = source.case_ids()
    index = {c: i for i, c in enumerate(case_ids)}
    outs = []
    for batch in pipeline.eval_batches(source, self.config.data):
      device, host = pipeline.split_host(batch)
      device["case_index"] = np.array([index[c] for c in host["case_id"]], np.int32)
      arrays = self.to_device(device)
      counts, loss_sum = self.eval_step(state, arrays)
      outs.append((counts, loss_sum, arrays["valid"], arrays["case_index"]))
    counts, loss_sum, valid, case_index = (parallel.to_host(list(x)) for x in zip(*outs, strict=False))
    valid = np.concatenate(valid) > 0
    counts = np.concatenate(counts)[valid]
    names = [case_ids[i] for i in np.concatenate(case_index)[valid]]
    result = summarize(counts, names)
    result["loss"] = float(np.sum(loss_sum) / max(valid.sum(), 1))
    return result
