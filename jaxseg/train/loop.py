"""train_and_evaluate: the training loop.

The hot loop only dispatches the compiled step on batches that a background thread has already
put on the devices; the host reads the on-device sums once per log interval. Evaluation and
checkpointing happen every `train.eval_every` steps and at the end.
"""

import json
import os
import signal
import time

import jax
import numpy as np

from jaxseg import models
from jaxseg.data import pipeline
from jaxseg.errors import TrainingError
from jaxseg.metrics import dice_iou
from jaxseg.models import onednn
from jaxseg.train import step as step_lib
from jaxseg.train.checkpoint import BEST_METRIC
from jaxseg.train.experiment import Experiment
from jaxseg.train.parallel import to_host


class MetricsWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, "metrics.jsonl") if jax.process_index() == 0 else None

  def write(self, record: dict):
    if self._path:
      with open(self._path, "a") as f:
        f.write(json.dumps(record) + "\n")


def echo(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def _fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _Preemption:
  """Turns SIGTERM into a flag the loop checks at each step boundary."""

  def __init__(self):
    self.requested = False
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._old = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns val metrics."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  exp = Experiment(config, workdir)
  sources = exp.sources()
  tc, total = config.train, exp.total_steps
  echo(f"data: {len(sources['train'])} train / {len(sources['val'])} val / "
       f"{len(sources['test'])} test slices from {sources['train'].root}")

  state, data_state, origin = exp.restore_or_init("latest")
  start = int(to_host(state.step))
  echo(f"model {config.model.name}: {_param_count(state):,} parameters; starting from {origin} "
       f"at step {start}/{total} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
       f"computing in {models.dtype_name(config.model.dtype)}")

  acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
  compiled, compile_s, flops = exp.compile_train_step(
      state, acc, pipeline.image_dtype(sources["train"], config.data))
  echo(f"train step compiled in {compile_s:.1f}s; {flops / 1e9:.1f} GFLOP per step; "
       f"convolutions {onednn.convolutions_in(compiled.as_text(), config.model.conv_impl)}")

  train_iter = iter(pipeline.train_dataset(sources["train"], config.data, config.seed))
  if data_state is not None:
    train_iter.set_state(data_state)
  batches = pipeline.DevicePrefetcher(train_iter, exp.batch_sharding)
  writer = MetricsWriter(workdir)
  preempt = _Preemption()
  val_metrics, last_saved = {}, None
  window_t0, window_start, loop_t0, wait_s = time.perf_counter(), start, time.perf_counter(), 0.0

  def save(step, metrics=None):
    nonlocal last_saved
    exp.checkpoints.save(step, state, batches.state(), metrics)
    last_saved = step

  try:
    for step in range(start, total):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        t0 = time.perf_counter()
        batch, _ = next(batches)
        wait_s += time.perf_counter() - t0
        with jax.transfer_guard("disallow"):  # an accidental host copy in the step fails loudly
          state, acc = compiled(state, batch, acc)
      done = step + 1
      is_eval = done % tc.eval_every == 0 or done == total
      if done % tc.log_every == 0 or is_eval or preempt.requested:
        host = to_host(acc)
        if host["nonfinite_step"] >= 0 and tc.nan_policy == "stop":
          raise TrainingError(
              f"loss is not finite at step {int(host['nonfinite_step'])}; stopped. Checkpoints "
              f"(last saved at step {last_saved}) were not overwritten. "
              "(--config.train.nan_policy=skip skips such steps instead.)")
        now = time.perf_counter()
        n_img = (done - window_start) * config.data.batch_size
        rate = n_img / max(now - window_t0, 1e-9)
        sec_per_step = (now - loop_t0) / (done - start)
        dice, iou = dice_iou(host["counts"])
        rec = {"step": done, "split": "train",
               "loss": float(host["loss_sum"] / max(host["steps"], 1)),
               "skipped_steps": int(host["skipped"]),
               "dice": float(np.mean(dice)), "iou": float(np.mean(iou)),
               "lr": float(exp.lr_schedule(step)), "images_per_s": rate,
               "data_wait": wait_s / max(now - window_t0, 1e-9),
               "epoch": done * config.data.batch_size / len(sources["train"])}
        writer.write(rec)
        echo(f"step {done}/{total} | epoch {rec['epoch']:.1f} | loss {rec['loss']:.4f} | "
             f"dice {rec['dice']:.3f} | lr {rec['lr']:.2e} | {rate:.1f} img/s | "
             f"data wait {100 * rec['data_wait']:.0f}% | ETA {_fmt_time(sec_per_step * (total - done))}"
             + (f" | skipped {rec['skipped_steps']} non-finite steps" if rec["skipped_steps"] else ""))
        acc = jax.device_put(step_lib.zero_accumulator(config.data.num_classes), exp.replicated)
        window_t0, window_start, wait_s = time.perf_counter(), done, 0.0
      if is_eval:
        val_metrics = exp.evaluate(state, sources["val"])
        if val_metrics:
          writer.write({"step": done, "split": "val",
                        **{k: v for k, v in val_metrics.items() if k != "cases"}})
          echo(f"  val | {_scores(val_metrics)}")
        save(done, {BEST_METRIC: val_metrics["dice"]} if val_metrics else None)
        window_t0 = time.perf_counter()  # evaluation time is not training throughput
      if preempt.requested:
        if last_saved != done:
          save(done)
        echo(f"SIGTERM: saved step {done}; rerun the same command to resume")
        break
  finally:
    batches.close()
    exp.checkpoints.wait()
    preempt.restore()

  if preempt.requested:
    return val_metrics
  if not val_metrics:  # resumed a finished run: report where it stands
    val_metrics = exp.evaluate(state, sources["val"])
  if val_metrics:
    echo(f"final validation: {_scores(val_metrics)}")
  return val_metrics


def _scores(m: dict) -> str:
  return (f"loss {m['loss']:.4f} | dice {m['dice']:.4f} | iou {m['iou']:.4f} | "
          f"dice/case {m['dice_per_case']:.4f} | dice/image {m['dice_per_image']:.4f} | "
          f"iou/image {m['iou_per_image']:.4f}")


def _param_count(state) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(state.params))
