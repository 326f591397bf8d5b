"""benchmarks/step_faults.py: its summary arithmetic, and a tiny run end to end."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import step_faults  # noqa: E402


def test_summary_counts_slow_steps_and_averages_per_step():
  def step(s, sys_s=0.0, thp=0):
    return {"s": s, "sys_s": sys_s, "thp_faults": thp}

  run = {"synced": [step(2.0), step(2.1), step(3.0, 1.5, 580), step(1.9)],
         "windows": [step(20.0, 0.1, 0), step(21.0, 1.9, 600)]}
  s = step_faults.summary(run, slow=1.3, window=10)
  assert s["median_ms"] == pytest.approx(2050) and s["max_ms"] == pytest.approx(3000)
  assert (s["slow_steps"], s["steps"]) == (1, 4)  # 3.0 >= 1.3 * 2.05; 2.1 is not
  assert s["sys_ms_per_step"] == pytest.approx(375) and s["thp_faults_per_step"] == 145
  assert s["b2b_ms_per_step"] == pytest.approx(2050)
  assert s["b2b_sys_ms_per_step"] == pytest.approx(100) and s["b2b_thp_faults_per_step"] == 30


def test_tiny_run_writes_a_row_per_process_under_each_delay(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
  subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_faults.py"),
                  "--model=unet:4:32", "--batch=2", "--warmup=1", "--steps=2", "--windows=1",
                  "--window=2", "--purge_delays=250,default", "--repeats=1", f"--out={tmp_path}"],
                 cwd=tmp_path, check=True, capture_output=True, text=True, env=env, timeout=300)
  (json_path,) = tmp_path.glob("step_faults-*.json")
  record = json.loads(json_path.read_text())
  assert [r["purge_delay"] for r in record["rows"]] == ["250", "default"]
  from jaxseg import allocator
  mimalloc = allocator.preloadable_mimalloc() is not None
  # The variable reaches each child: the listed value, else the jaxseg command's own.
  assert [r["env_value"] for r in record["rows"]] == (
      ["250", allocator.MIMALLOC_PURGE_DELAY] if mimalloc else ["250", None])
  assert all(r["mimalloc"] == mimalloc for r in record["rows"])
  for r in record["rows"]:
    assert len(r["raw"]["synced"]) == 2 and len(r["raw"]["windows"]) == 1
    assert r["median_ms"] > 0 and r["b2b_ms_per_step"] > 0 and r["steps"] == 2
  assert "| 250 (250) |" in json_path.with_suffix(".md").read_text()
