"""benchmarks/step_faults.py end to end, one tiny model. (Not imported here: its absl flags
would clash with the other benchmark scripts' that tests import.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_writes_a_row_per_process_under_each_delay(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
  subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_faults.py"),
                  "--model=unet:4:32", "--batch=2", "--warmup=1", "--steps=3", "--windows=2",
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
    synced, windows = r["raw"]["synced"], r["raw"]["windows"]
    assert len(synced) == 3 and len(windows) == 2 and r["steps"] == 3
    walls = [s["s"] for s in synced]
    # The table's figures are the per-step records' own.
    assert r["median_ms"] == pytest.approx(1e3 * float(np.median(walls)))
    assert r["max_ms"] == pytest.approx(1e3 * max(walls))
    assert r["slow_steps"] == sum(w >= 1.3 * np.median(walls) for w in walls)
    assert r["sys_ms_per_step"] == pytest.approx(1e3 * np.mean([s["sys_s"] for s in synced]))
    assert r["thp_faults_per_step"] == pytest.approx(np.mean([s["thp_faults"] for s in synced]))
    assert r["b2b_ms_per_step"] == pytest.approx(1e3 * sum(w["s"] for w in windows) / 4)
    assert r["b2b_thp_faults_per_step"] == pytest.approx(
        sum(w["thp_faults"] for w in windows) / 4)
    assert all(s["s"] > 0 and s["sys_s"] >= 0 and s["thp_faults"] >= 0 for s in synced)
  assert "| 250 (250) |" in json_path.with_suffix(".md").read_text()
