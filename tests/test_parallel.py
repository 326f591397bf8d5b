"""Data parallelism: fake CPU devices in one process, and two processes via jax.distributed."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_cli import ROOT, TINY

from jaxseg.train.checkpoint import Checkpoints

SGD = ["--config.optim.name=sgd", "--config.optim.lr=0.05", "--config.optim.warmup_steps=0",
       "--config.data.augment.hflip=0", "--config.data.augment.vflip=0",
       "--config.data.augment.rot90=0"]


def _train(workdir, root, env_extra, launcher=None, extra=()):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  cmd = [sys.executable, "-m", "jaxseg.cli"] if launcher is None else launcher
  args = ["train", f"--workdir={workdir}", *TINY, *SGD, f"--config.data.root={root}", *extra]
  proc = subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def _final_params(workdir):
  ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  return ckpt.read(ckpt.latest_step())[0]


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), a, b)


def test_four_devices_give_the_same_training_as_one(lgg_root, tmp_path):
  one, four = str(tmp_path / "one"), str(tmp_path / "four")
  _train(one, lgg_root, {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  out = _train(four, lgg_root, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert "on 4 cpu device(s)" in out
  a, b = _final_params(one), _final_params(four)
  # BatchNorm statistics too: under jit with a sharded batch they are global-batch statistics.
  _assert_close(a["params"], b["params"])
  _assert_close(a["batch_stats"], b["batch_stats"])


def test_two_processes_with_jax_distributed_match_one_process(lgg_root, tmp_path):
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  _train(single, lgg_root, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  out = _train(multi, lgg_root, {"NPROC": "2", "CPU_DEVICES": "1",
                                 "JAXSEG": f"{sys.executable} -m jaxseg.cli"},
               launcher=["bash", os.path.join(ROOT, "launch", "local.sh")])
  assert "on 2 cpu device(s)" in out
  assert out.count("final validation") == 1  # only process 0 prints
  _assert_close(_final_params(single)["params"], _final_params(multi)["params"])


def test_batch_that_does_not_divide_over_devices_is_an_error(lgg_root, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.cli", "train", f"--workdir={tmp_path}", *TINY,
       f"--config.data.root={lgg_root}", "--config.data.batch_size=6"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "data.batch_size=6 must split over 4 devices" in proc.stderr


@pytest.mark.parametrize("missing", ["--num_processes=2", "--process_id=0"])
def test_coordinator_without_rank_fails_fast(missing, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "jaxseg.cli", "train", f"--workdir={tmp_path}",
       "--config=configs/demo.py", "--coordinator_address=127.0.0.1:1", missing],
      cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "--coordinator_address needs" in proc.stderr
