"""What a train step's slow outliers are made of: each step's wall time, the process's system
(kernel) CPU time and the transparent huge pages the kernel faulted in meanwhile, synced step by
step and then back to back in windows, under each listed mimalloc purge delay, in fresh
processes alternated.

  .venv/bin/python benchmarks/step_faults.py --model=unet:32:256 --purge_delays=10000,-1

A step that faults in its temporaries afresh (the allocator gave them back to the system since
the last step) shows as system time and hundreds of huge-page faults at once (2 MB each); a
step slow for other reasons (the VM's neighbours) shows neither. The huge-page count is the
machine's (/proc/vmstat), so run it on an otherwise idle machine. Each process runs under the
jaxseg command's allocator (jaxseg/allocator.py) with MIMALLOC_PURGE_DELAY set as listed
("default": jaxseg's own). Writes results/step_faults-DATE-HHMM-DEVICE.{md,json} (UTC).
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from jaxseg import allocator

import result_files

_MODEL = flags.DEFINE_string("model", "unet:32:256", "NAME:FEATURES:SIZE (registry name, "
                             "model.features, square input side)")
_BATCH = flags.DEFINE_integer("batch", 8, "batch size")
_WARMUP = flags.DEFINE_integer("warmup", 10, "untimed steps first (mimalloc settles over ~20 "
                               "steps of the UNet at 256 px)")
_STEPS = flags.DEFINE_integer("steps", 60, "synced steps, each timed alone")
_WINDOWS = flags.DEFINE_integer("windows", 6, "back-to-back windows after the synced steps")
_WINDOW = flags.DEFINE_integer("window", 10, "steps per back-to-back window (one sync at its end)")
_DELAYS = flags.DEFINE_list("purge_delays", ["10000", "default"],
                            "MIMALLOC_PURGE_DELAY values (ms; -1 never; default: jaxseg's)")
_REPEATS = flags.DEFINE_integer("repeats", 2, "processes per delay, alternated")
_SLOW = flags.DEFINE_float("slow", 1.3, "a synced step this many times the median is slow")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")
_CHILD = flags.DEFINE_string("child", None, "internal: one process's measurement (JSON spec)")


def _huge_page_faults() -> int:
  with open("/proc/vmstat") as f:
    for line in f:
      if line.startswith("thp_fault_alloc "):
        return int(line.split()[1])
  return 0


class _Counters:
  """Wall seconds, this process's system CPU seconds and the machine's huge-page faults since
  construction."""

  def __init__(self):
    self.t, self.sys, self.thp = time.perf_counter(), os.times().system, _huge_page_faults()

  def since(self) -> dict:
    return {"s": time.perf_counter() - self.t, "sys_s": os.times().system - self.sys,
            "thp_faults": _huge_page_faults() - self.thp}


def run_child(spec: dict) -> dict:
  import jax

  from jaxseg.bench import compiled_step
  from jaxseg.config import default_config

  c = default_config()
  c.model.name, c.model.features = spec["name"], spec["features"]
  c.data.image_size, c.data.batch_size = spec["size"], spec["batch"]
  _, state, acc, compiled, _, _, batch = compiled_step(c)
  for _ in range(spec["warmup"]):
    state, acc = compiled(state, batch, acc)
  jax.block_until_ready((state, acc))
  synced, windows = [], []
  for _ in range(spec["steps"]):
    counters = _Counters()
    state, acc = compiled(state, batch, acc)
    jax.block_until_ready((state, acc))
    synced.append(counters.since())
  for _ in range(spec["windows"]):
    counters = _Counters()
    for _ in range(spec["window"]):
      state, acc = compiled(state, batch, acc)
    jax.block_until_ready((state, acc))
    windows.append(counters.since())
  return {"synced": synced, "windows": windows, "device": jax.devices()[0].device_kind,
          "purge_delay": os.environ.get("MIMALLOC_PURGE_DELAY"),
          "mimalloc": "libmimalloc" in os.environ.get("LD_PRELOAD", ""),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(spec: dict, delay: str) -> dict:
  env = dict(os.environ)
  if delay != "default":
    env["MIMALLOC_PURGE_DELAY"] = delay
  out = subprocess.run([sys.executable, __file__, f"--child={json.dumps(spec)}"],
                       capture_output=True, text=True, env=env)
  if out.returncode:
    raise RuntimeError(f"{spec} under MIMALLOC_PURGE_DELAY={delay} failed (exit "
                       f"{out.returncode}):\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def summary(run: dict, slow: float, window: int) -> dict:
  """One process's figures: synced median / max ms, slow steps, system seconds and huge-page
  faults per step; back to back ms per step, system seconds and faults per step."""
  walls = sorted(s["s"] for s in run["synced"])
  n = len(walls)
  median = walls[n // 2] if n % 2 else (walls[n // 2 - 1] + walls[n // 2]) / 2
  b2b_steps = window * len(run["windows"])
  return {
      "median_ms": 1e3 * median, "max_ms": 1e3 * walls[-1],
      "slow_steps": sum(w >= slow * median for w in walls), "steps": n,
      "sys_ms_per_step": 1e3 * sum(s["sys_s"] for s in run["synced"]) / n,
      "thp_faults_per_step": sum(s["thp_faults"] for s in run["synced"]) / n,
      "b2b_ms_per_step": 1e3 * sum(w["s"] for w in run["windows"]) / max(b2b_steps, 1),
      "b2b_sys_ms_per_step": 1e3 * sum(w["sys_s"] for w in run["windows"]) / max(b2b_steps, 1),
      "b2b_thp_faults_per_step": sum(w["thp_faults"] for w in run["windows"]) / max(b2b_steps, 1),
  }


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(run_child(json.loads(_CHILD.value))), flush=True)
    return
  name, features, size = _MODEL.value.split(":")
  spec = {"name": name, "features": int(features), "size": int(size), "batch": _BATCH.value,
          "warmup": _WARMUP.value, "steps": _STEPS.value, "windows": _WINDOWS.value,
          "window": _WINDOW.value}
  from jaxseg.bench import git_commit
  started, commit = result_files.started(), git_commit()
  command = "python " + " ".join(sys.argv)
  rows, device = [], "?"
  header = ["purge delay", "synced median ms", "max ms", f"steps >= {_SLOW.value}x median",
            "system ms / step", "huge-page faults / step", "back to back ms / step",
            "back to back system ms / step", "back to back huge-page faults / step",
            "peak RSS MB"]
  for repeat in range(_REPEATS.value):
    for delay in _DELAYS.value:
      run = _measure(spec, delay)
      device = run["device"]
      rows.append({"purge_delay": delay, "env_value": run["purge_delay"],
                   "mimalloc": run["mimalloc"], "repeat": repeat,
                   "peak_rss_mb": run["peak_rss_mb"],
                   **summary(run, _SLOW.value, _WINDOW.value), "raw": run})
      cells = [[f"{r['purge_delay']} ({r['env_value']})", f"{r['median_ms']:.0f}",
                f"{r['max_ms']:.0f}", f"{r['slow_steps']} / {r['steps']}",
                f"{r['sys_ms_per_step']:.0f}", f"{r['thp_faults_per_step']:.1f}",
                f"{r['b2b_ms_per_step']:.0f}", f"{r['b2b_sys_ms_per_step']:.0f}",
                f"{r['b2b_thp_faults_per_step']:.1f}", f"{r['peak_rss_mb']:.0f}"] for r in rows]
      markdown = (f"# Step faults: {_MODEL.value}, batch {_BATCH.value}\n\n"
                  f"{started} UTC, {device} ({result_files.host_cpu()}), commit "
                  f"{commit}\n\n`{command}`\n\n"
                  f"{_WARMUP.value} warm-up steps, then {_STEPS.value} synced steps and "
                  f"{_WINDOWS.value} back-to-back windows of {_WINDOW.value} per process; "
                  f"fresh processes alternated.\n\n" + result_files.table(header, cells))
      path = result_files.stem(_OUT.value, "step_faults", started, device)
      result_files.write(path, {"command": command, "started": started, "device": device,
                                "commit": commit, "spec": spec, "rows": rows}, markdown)
  print(markdown)


if __name__ == "__main__":
  # The children inherit this process's allocator environment, the jaxseg command's.
  allocator.reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
