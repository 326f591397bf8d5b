"""Preemption, crashes and bad steps: nothing saved is lost, and a resumed run continues exactly."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_cli import ROOT, TINY

from jaxseg.bench import _random_batch
from jaxseg.train import step as step_lib
from jaxseg.train.checkpoint import Checkpoints
from jaxseg.train.experiment import Experiment

CONSTANT_LR = ["--config.optim.warmup_steps=0", "--config.optim.min_lr=0.003",
               "--config.optim.lr=0.003", "--config.train.log_every=1"]


def _start(workdir, root, steps, eval_every):
  args = [sys.executable, "-u", "-m", "jaxseg.cli", "train", f"--workdir={workdir}", *TINY,
          *CONSTANT_LR, f"--config.data.root={root}", f"--config.train.steps={steps}",
          f"--config.train.eval_every={eval_every}"]
  return subprocess.Popen(args, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_until(proc, marker):
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if marker in line:
      return lines
  raise AssertionError("process ended before " + marker + ":\n" + "".join(lines))


def _losses(workdir):
  """Per-step train loss; after a resume the later record of a step wins."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def test_sigkill_then_rerun_gives_the_uninterrupted_losses(lgg_root, tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  p = _start(straight, lgg_root, 12, 3)
  assert p.wait(timeout=300) == 0, p.stdout.read()
  p = _start(killed, lgg_root, 12, 3)
  _run_until(p, "step 8/12")
  p.send_signal(signal.SIGKILL)
  p.wait(timeout=60)
  assert Checkpoints(os.path.join(killed, "checkpoints"), read_only=True).latest_step() < 12
  p = _start(killed, lgg_root, 12, 3)
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 0, out
  assert "starting from checkpoint step" in out
  want, got = _losses(straight), _losses(killed)
  assert sorted(got) == list(range(1, 13))
  for step in range(1, 13):
    assert got[step] == pytest.approx(want[step], rel=1e-5), step


def test_sigterm_saves_at_the_next_step_and_exits_cleanly(lgg_root, tmp_path):
  p = _start(str(tmp_path), lgg_root, 500, 1000)
  _run_until(p, "step 3/500")
  p.send_signal(signal.SIGTERM)
  out = p.communicate(timeout=120)[0]
  assert p.returncode == 0, out
  saved = [line for line in out.splitlines() if line.startswith("SIGTERM: saved step")]
  assert saved, out
  step = int(saved[0].split()[3].rstrip(";"))
  ckpt = Checkpoints(os.path.join(tmp_path, "checkpoints"), read_only=True)
  assert ckpt.latest_step() == step >= 3


def test_partially_written_checkpoint_is_never_latest(lgg_root, tmp_path):
  c = tiny_config(lgg_root)
  c.train.steps, c.train.eval_every = 2, 2
  from jaxseg.train.loop import train_and_evaluate
  train_and_evaluate(c, str(tmp_path))
  # What a crash in the middle of saving step 4 leaves: Orbax's temporary folder.
  partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1764000000000000"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_bytes(b"\0" * 10)
  ckpt = Checkpoints(os.path.join(tmp_path, "checkpoints"))
  assert ckpt.latest_step() == 2
  exp = Experiment(c, str(tmp_path))
  _, _, origin = exp.restore_or_init()
  assert origin == "checkpoint step 2"


def _experiment(lgg_root, **train):
  c = tiny_config(lgg_root)
  c.model.norm = "none"  # micro-batch BN statistics differ from big-batch ones by design
  c.optim.name, c.optim.lr = "sgd", 0.1
  c.train.update(train)
  return Experiment(c, "")


def _steps(exp, n):
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
  for i in range(n):
    state, acc = exp.train_step(state, _random_batch(exp, seed=i), acc)
  return state, acc


def test_gradient_accumulation_equals_the_big_batch(lgg_root):
  big, _ = _steps(_experiment(lgg_root), 2)
  micro, acc = _steps(_experiment(lgg_root, grad_accum=2), 2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               big.params, micro.params)
  assert int(acc["steps"]) == 2


def test_gradient_accumulation_compiles_without_a_loop_on_cpu(lgg_root):
  """XLA's CPU backend runs convolutions in a loop body ~40x slower, so on CPU the micro-batch
  loop must be unrolled (jaxseg/train/step.py)."""
  exp = _experiment(lgg_root, grad_accum=2)
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
  hlo = exp.train_step.lower(state, exp.abstract_batch(), acc).as_text()
  assert ("while" in hlo) == (jax.default_backend() != "cpu")


def test_skip_policy_leaves_state_unchanged_on_a_nan_batch(lgg_root):
  exp = _experiment(lgg_root, nan_policy="skip")
  state = exp.init_state()
  acc = jax.device_put(step_lib.zero_accumulator(1), exp.replicated)
  before = jax.device_get(state.params)
  bad = _random_batch(exp)
  bad["image"] = bad["image"] * jnp.nan
  state, acc = exp.train_step(state, bad, acc)
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
  assert int(state.step) == 1 and int(acc["skipped"]) == 1 and int(acc["nonfinite_step"]) == 0
  state, acc = exp.train_step(state, _random_batch(exp), acc)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before,
                         jax.device_get(state.params))
  assert all(jax.tree.leaves(changed)) and int(acc["steps"]) == 1


def test_bfloat16_and_remat_train_with_float32_state(lgg_root):
  base = _experiment(lgg_root)
  state, acc = _steps(base, 1)
  for variant in ({"dtype": "bfloat16"}, {"remat": True}):
    exp = _experiment(lgg_root)
    exp.config.model.update(variant)
    exp = Experiment(exp.config, "")
    s, a = _steps(exp, 1)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(s.params))
    assert np.isfinite(float(a["loss_sum"]))
    tol = 0.1 if "dtype" in variant else 1e-5  # bf16 convs round; remat recomputes exactly
    np.testing.assert_allclose(float(a["loss_sum"]), float(acc["loss_sum"]), rtol=tol)
