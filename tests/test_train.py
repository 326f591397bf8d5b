import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxseg.data import pipeline
from jaxseg.data.sources.lgg import LGGSource
from jaxseg.errors import TrainingError
from jaxseg.train import step as step_lib
from jaxseg.train.checkpoint import Checkpoints
from jaxseg.train.experiment import Experiment
from jaxseg.train.loop import train_and_evaluate


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _params(workdir, step):
  ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  return ckpt.read(step)[0]["params"]


def test_tiny_unet_learns_and_writes_run_files(lgg_root, tmp_path):
  c = tiny_config(lgg_root)
  c.train.steps, c.train.log_every, c.train.eval_every = 80, 20, 40
  result = train_and_evaluate(c, str(tmp_path))
  train = _records(tmp_path, "train")
  assert [r["step"] for r in train] == [20, 40, 60, 80]
  assert train[-1]["loss"] < 0.9 * train[0]["loss"]
  assert train[-1]["dice"] > train[0]["dice"] + 0.3
  assert set(result) >= {"dice", "iou", "dice_per_case", "dice_per_image", "loss"}
  assert 0 <= result["dice"] <= 1 and result["num_images"] > 0
  assert [r["step"] for r in _records(tmp_path, "val")] == [40, 80]
  for name in ("split.json", "config.json"):
    assert os.path.exists(tmp_path / name)
  ckpt = Checkpoints(os.path.join(tmp_path, "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [40, 80]


def test_resume_continues_exactly(lgg_root, tmp_path):
  """6 steps straight == 3 steps, stop, rerun to 6: same params, same sample order."""
  def cfg(steps):
    c = tiny_config(lgg_root)
    c.train.steps, c.train.eval_every, c.optim.min_lr = steps, 3, c.optim.lr  # constant lr
    return c

  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  train_and_evaluate(cfg(6), straight)
  train_and_evaluate(cfg(3), resumed)
  assert Checkpoints(os.path.join(resumed, "checkpoints"), read_only=True).latest_step() == 3
  train_and_evaluate(cfg(6), resumed)
  a, b = _params(straight, 6), _params(resumed, 6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  assert [r["loss"] for r in _records(straight, "train")][-1] == pytest.approx(
      [r["loss"] for r in _records(resumed, "train")][-1], rel=1e-5)


def test_nan_loss_stops_and_keeps_best_checkpoint(lgg_root, tmp_path, monkeypatch):
  c = tiny_config(lgg_root)
  c.train.steps, c.train.eval_every = 2, 2
  train_and_evaluate(c, str(tmp_path))
  before = _params(tmp_path, 2)

  real_loss = step_lib.losses.seg_loss
  monkeypatch.setattr(step_lib.losses, "seg_loss",
                      lambda *a, **k: real_loss(*a, **k) * jnp.nan)
  c.train.steps = 6
  with pytest.raises(TrainingError, match=r"loss is not finite at step 2; stopped"):
    train_and_evaluate(c, str(tmp_path))
  ckpt = Checkpoints(os.path.join(tmp_path, "checkpoints"), read_only=True)
  assert ckpt.all_steps() == [2] and ckpt.best_step() == 2
  after = _params(tmp_path, 2)
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_train_iterator_state_resumes_same_batches(lgg_root):
  c = tiny_config(lgg_root).data
  src = LGGSource(lgg_root)
  it = iter(pipeline.train_dataset(src, c, seed=0))
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  again = iter(pipeline.train_dataset(src, c, seed=0))
  np.testing.assert_array_equal(next(again)["image"], first[0]["image"])
  again.set_state(state)
  for want in rest:
    got = next(again)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["mask"], want["mask"])
  other = iter(pipeline.train_dataset(src, c, seed=1))
  assert not np.array_equal(next(other)["image"], first[0]["image"])


def test_worker_processes_give_the_same_batches(lgg_root):
  c = tiny_config(lgg_root).data
  src = LGGSource(lgg_root)
  inproc = iter(pipeline.train_dataset(src, c, seed=0))
  c.num_workers = 1
  workers = iter(pipeline.train_dataset(src, c, seed=0))
  for _ in range(2):
    a, b = next(inproc), next(workers)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert list(a["case_id"]) == list(b["case_id"])


def test_eval_batches_pad_to_fixed_shape_and_cover_every_slice(lgg_root):
  c = tiny_config(lgg_root).data
  c.eval_batch_size = 8
  src = LGGSource(lgg_root).subset(LGGSource(lgg_root).case_ids()[:2])  # 12 slices
  batches = list(pipeline.eval_batches(src, c))
  assert [b["image"].shape[0] for b in batches] == [8, 8]
  assert sum(b["valid"].sum() for b in batches) == 12
  assert batches[1]["valid"].tolist() == [1] * 4 + [0] * 4


def test_errors_inside_the_loader_reach_the_loop_with_the_file_name(tmp_path):
  from jaxseg.data import builtin
  root = builtin.write_synthetic(str(tmp_path / "d"), patients=3, slices=4, size=32)
  bad = os.path.join(root, "SYN_01_00000101", "SYN_01_00000101_2.tif")
  with open(bad, "wb") as f:
    f.write(b"II*\x00garbage")
  c = tiny_config(root)
  exp = Experiment(c, "")
  src = LGGSource(root)
  batches = pipeline.DevicePrefetcher(iter(pipeline.train_dataset(src, c.data, 0)),
                                      exp.batch_sharding)
  with pytest.raises(Exception, match=r"SYN_01_00000101_2\.tif: unreadable TIFF"):
    for _ in range(10):
      next(batches)
  batches.close()


def test_prefetcher_close_ends_the_loader_workers(tmp_path):
  import multiprocessing

  from jaxseg.data import builtin
  root = builtin.write_synthetic(str(tmp_path / "d"), patients=2, slices=4, size=32)
  c = tiny_config(root)
  c.data.num_workers = 1
  exp = Experiment(c, "")
  batches = pipeline.DevicePrefetcher(iter(pipeline.train_dataset(LGGSource(root), c.data, 0)),
                                      exp.batch_sharding)
  next(batches)
  assert multiprocessing.active_children()  # the Grain worker
  batches.close()
  assert not multiprocessing.active_children()


def test_shared_memory_still_referenced_at_exit_is_unlinked():
  """A batch array that a worker handed over in shared memory and that something still holds at
  exit (a daemon thread, say): the exit hook unlinks its segment's name, so no "leaked
  shared_memory" is left to the resource tracker, and the array stays readable."""
  from grain._src.python.ipc import shared_memory_array as shm_array
  sent = shm_array.SharedMemoryArray((4, 8), np.float32)  # as a worker writes it
  np.copyto(sent, np.arange(32, dtype=np.float32).reshape(4, 8))
  held = shm_array.open_from_shm(sent.metadata)  # as the main process opens it
  name = sent.shm.name
  del sent  # the worker's side closes its mapping without unlinking
  assert os.path.exists(f"/dev/shm/{name}")
  pipeline._release_shared_memory()
  assert not os.path.exists(f"/dev/shm/{name}")
  np.testing.assert_array_equal(held, np.arange(32, dtype=np.float32).reshape(4, 8))
  del held  # its finaliser only closes the mapping now: no error, nothing left
