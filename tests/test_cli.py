"""The command line as users call it: one subprocess per command, on a tiny synthetic set."""

import json
import os
import platform
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/demo.py", "--config.data.image_size=32", "--config.model.features=4",
        "--config.model.depth=2", "--config.data.batch_size=4", "--config.data.eval_batch_size=4",
        "--config.train.steps=4", "--config.train.eval_every=2", "--config.train.log_every=2"]


def jaxseg(*args, check=True, env=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  proc = subprocess.run([sys.executable, "-m", "jaxseg", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  if check and proc.returncode:
    raise AssertionError(f"jaxseg {args} failed:\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_unknown_config_key_and_wrong_type_are_errors():
  bad_key = jaxseg("train", "--workdir=/tmp/x", "--config=configs/demo.py",
                   "--config.optim.lrr=1", check=False)
  assert bad_key.returncode != 0 and "lrr" in bad_key.stderr
  bad_type = jaxseg("train", "--workdir=/tmp/x", "--config=configs/demo.py",
                    "--config.optim.lr=fast", check=False)
  assert bad_type.returncode != 0 and "fast" in bad_type.stderr
  no_cmd = jaxseg("--config=configs/demo.py", check=False)
  assert no_cmd.returncode != 0 and "usage: jaxseg {train|evaluate|predict|bench|sweep|report}" in no_cmd.stderr


def test_help_lists_every_flag():
  out = jaxseg("--help", check=False).stdout
  for flag in ("--config", "--workdir", "--checkpoint", "--split", "--input", "--output",
               "--[no]overlay", "--what", "--bench_steps", "--coordinator_address", "--sweep",
               "--sweep_index", "--[no]per_case", "--[no]tta", "--ensemble", "--layers",
               "--compilation_cache"):
    assert flag in out, flag


@pytest.fixture(scope="module")
def trained(lgg_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  out = jaxseg("train", f"--workdir={workdir}", *TINY, f"--config.data.root={lgg_root}").stdout
  return workdir, out


def test_train_prints_progress_and_final_scores(trained):
  _, out = trained
  assert "step 2/4" in out and "img/s" in out and "ETA" in out
  assert "computing in float32" in out  # model.dtype=auto on a CPU
  # model.conv_impl=auto: oneDNN's 3x3 convolutions where this machine can build them
  from jaxseg.models import onednn
  assert f"convolutions {'onednn' if onednn.usable() else 'xla'}" in out
  final = [line for line in out.splitlines() if line.startswith("final validation")]
  assert final and "dice" in final[0] and "iou" in final[0]


def test_rerun_resumes_instead_of_restarting(trained, lgg_root):
  workdir, _ = trained
  out = jaxseg("train", f"--workdir={workdir}", *TINY, f"--config.data.root={lgg_root}").stdout
  assert "starting from checkpoint step 4 at step 4/4" in out


def test_evaluate_reports_the_split(trained, lgg_root):
  workdir, _ = trained
  out = jaxseg("evaluate", f"--workdir={workdir}", *TINY, f"--config.data.root={lgg_root}",
               "--split=test", "--checkpoint=latest").stdout
  result = json.loads(out[out.index("{"):])
  assert result["split"] == "test" and result["step"] == 4
  assert 0 <= result["dice"] <= 1 and 0 <= result["iou"] <= 1
  split = json.load(open(os.path.join(workdir, "split.json")))
  assert result["num_images"] == 6 * len(split["test"])
  assert os.path.exists(os.path.join(workdir, "eval_test_4.json"))


def test_predict_writes_masks_of_the_input_size_and_overlays(trained, lgg_root, tmp_path):
  workdir, _ = trained
  patient = sorted(os.listdir(lgg_root))[0]
  png = tmp_path / "in" / "slice.png"
  png.parent.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(png)
  out_dir = tmp_path / "out"
  jaxseg("predict", f"--workdir={workdir}", *TINY, f"--input={lgg_root}/{patient},{png}",
         f"--output={out_dir}", "--overlay")
  masks = sorted(p for p in os.listdir(out_dir) if p.endswith("_pred.png"))
  assert len(masks) == 7  # 6 slices of the patient (not their _mask files) + the png
  m = np.asarray(Image.open(out_dir / "slice_pred.png"))
  assert m.shape == (40, 50) and set(np.unique(m)) <= {0, 255}
  tif_overlay = np.asarray(Image.open(out_dir / f"{patient}_1_overlay.png"))
  assert tif_overlay.shape == (32, 96, 3)  # image | truth | prediction
  assert np.asarray(Image.open(out_dir / "slice_overlay.png")).shape == (40, 100, 3)


def test_bench_prints_step_loop_and_data_numbers(tmp_path):
  # Every compile goes to the given cache folder (these tiny ones are under XLA's 1 s default),
  # not to the suite's (conftest.py; the variable, where set, would win over the flag).
  out = jaxseg("bench", *TINY, "--bench_steps=3", f"--profile={tmp_path / 'trace'}",
               f"--compilation_cache={tmp_path / 'xla'}",
               env={"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_COMPILATION_CACHE_DIR": ""}).stdout
  assert "ms/step" in out and "GFLOP/step" in out and "compile" in out
  assert "MFU" in out and "measured" in out and "step memory" in out  # CPU: measured peak
  assert "| convolutions " in out
  assert "input wait" in out and "samples/s per worker core" in out
  assert "ms waiting on Grain" in out and "ms to device" in out  # the loader thread's split
  # The loop against the same step without a loader: both times measured, the ratio theirs
  # (within the rounding of the three printed numbers).
  loop_ms, alone_ms, ratio = map(float, re.search(
      r"loop .*\| ([\d.]+) ms/step .*step alone ([\d.]+) ms \(loop ([\d.]+)x it\)", out).groups())
  assert alone_ms > 0.05
  assert (loop_ms - 0.05) / (alone_ms + 0.05) - 0.005 <= ratio
  assert ratio <= (loop_ms + 0.05) / (alone_ms - 0.05) + 0.005
  assert "augmentation on the host" in out  # data.augment.on_device=auto on a CPU
  traces = [p for p in (tmp_path / "trace").rglob("*") if p.is_file()]
  assert traces and any(p.stat().st_size > 0 for p in traces)  # the profiler trace
  assert any("train_step" in p.name for p in (tmp_path / "xla").iterdir())


def test_run_with_loader_workers_ends_without_leaked_shared_memory(tmp_path, lgg_root):
  """Grain's workers hand batches over in shared memory; what was still to be unlinked at exit
  was left to Python's resource tracker, which warned of "leaked shared_memory objects" after
  runs with workers (data/pipeline.py: _release_shared_memory)."""
  out = jaxseg("train", f"--workdir={tmp_path}", *TINY, f"--config.data.root={lgg_root}",
               "--config.data.num_workers=2")
  assert "final validation" in out.stdout
  assert "leaked" not in out.stderr, out.stderr[-2000:]


def test_missing_checkpoint_is_a_clear_error(tmp_path, lgg_root):
  proc = jaxseg("evaluate", f"--workdir={tmp_path}", *TINY, f"--config.data.root={lgg_root}",
                check=False)
  assert proc.returncode != 0 and "no checkpoint" in proc.stderr


def test_malloc_defaults_add_only_what_the_environment_lacks():
  from jaxseg.allocator import MALLOC_TUNABLE, MIMALLOC_PURGE_DELAY, malloc_defaults
  lib = "/x/libmimalloc.so"
  fresh = malloc_defaults({}, "linux", lib)
  assert fresh == {"GLIBC_TUNABLES": MALLOC_TUNABLE, "LD_PRELOAD": lib,
                   "MIMALLOC_PURGE_DELAY": MIMALLOC_PURGE_DELAY}
  assert malloc_defaults(fresh, "linux", lib) == {}  # the re-executed process adds nothing
  assert malloc_defaults({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux", None) == {
      "GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{MALLOC_TUNABLE}"}  # no mimalloc installed
  # A user's preload, tunable or purge delay stays theirs.
  assert malloc_defaults({"LD_PRELOAD": "libtcmalloc.so"}, "linux", lib) == {
      "GLIBC_TUNABLES": MALLOC_TUNABLE}
  assert malloc_defaults({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
                          "MIMALLOC_PURGE_DELAY": "250"}, "linux", lib) == {"LD_PRELOAD": lib}
  assert malloc_defaults({"JAXSEG_MALLOC_DEFAULTS": "0"}, "linux", lib) == {}
  assert malloc_defaults({}, "darwin", lib) == {}


def test_no_mimalloc_preload_beside_a_jax_accelerator_plugin(monkeypatch):
  import importlib.util

  from jaxseg import allocator
  assert allocator.preloadable_mimalloc() == allocator.mimalloc_library()  # none installed here
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: object() if name == "jax_plugins" else find_spec(name, *a))
  assert allocator.preloadable_mimalloc() is None


def test_glibc_environment_takes_mimalloc_out():
  from jaxseg.allocator import MALLOC_TUNABLE, glibc_environment
  env = {"LD_PRELOAD": "/x/libmimalloc.so", "MIMALLOC_PURGE_DELAY": "10000", "HOME": "/h"}
  assert glibc_environment(env) == {"HOME": "/h", "JAXSEG_MALLOC_DEFAULTS": "0",
                                    "GLIBC_TUNABLES": MALLOC_TUNABLE}
  assert env["LD_PRELOAD"] == "/x/libmimalloc.so"  # a copy


def test_named_environments_for_the_benchmarks_children():
  from jaxseg.allocator import MALLOC_TUNABLE, named_environment, usable_names
  env = {"LD_PRELOAD": "/x/libmimalloc.so", "MIMALLOC_PURGE_DELAY": "-1", "HOME": "/h"}
  assert named_environment("jaxseg", env) is None  # the parent's own
  assert named_environment("mimalloc:10000", env) == {**env, "MIMALLOC_PURGE_DELAY": "10000"}
  assert named_environment("glibc", env)["GLIBC_TUNABLES"] == MALLOC_TUNABLE
  with pytest.raises(ValueError, match="tcmalloc"):
    named_environment("tcmalloc", env)
  names = ["jaxseg", "glibc", "mimalloc:10000"]
  assert usable_names(names, env) == names
  # Without mimalloc preloaded (a host with a JAX GPU plugin) there is no purge delay to vary.
  assert usable_names(names, {"HOME": "/h"}) == ["jaxseg", "glibc"]


def test_cli_reexecs_once_with_the_malloc_defaults():
  from jaxseg.allocator import MALLOC_TUNABLE, reexec_with_malloc_defaults
  calls = []
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}

  def reexec(env, system, argv):
    reexec_with_malloc_defaults(env, lambda *a: calls.append(a), system, argv,
                                mimalloc=lambda: "/x/libmimalloc.so")
  reexec(env, "linux", ["jaxseg", "bench", "-x"])
  assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{MALLOC_TUNABLE}"
  assert env["LD_PRELOAD"] == "/x/libmimalloc.so"
  assert calls == [(sys.executable, [sys.executable, "-m", "jaxseg", "bench", "-x"])]
  reexec(env, "linux", ["jaxseg"])  # the child
  assert len(calls) == 1
  for env, system in [({"JAXSEG_MALLOC_DEFAULTS": "0"}, "linux"),
                      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", "LD_PRELOAD": ""}, "linux"),
                      ({}, "darwin")]:
    before = dict(env)
    reexec(env, system, ["jaxseg"])
    assert env == before and len(calls) == 1


def test_the_reexecuted_process_runs_on_mimalloc_with_the_tunable(tmp_path):
  from jaxseg.allocator import mimalloc_library
  # The wheel is a dependency on x86-64 Linux: there it must be found.
  assert mimalloc_library() or not (sys.platform == "linux" and platform.machine() == "x86_64")
  script = tmp_path / "probe.py"
  script.write_text(
      "import os, sys\nfrom jaxseg import allocator\n"
      "print('before: ' + os.environ.get('GLIBC_TUNABLES', '-'), flush=True)\n"
      "allocator.reexec_with_malloc_defaults(command=[sys.executable, '-c', "
      "'import os; print(\"after: \" + os.environ[\"GLIBC_TUNABLES\"]); "
      "print(\"mimalloc mapped:\", \"libmimalloc\" in open(\"/proc/self/maps\").read())'])\n"
      "print('not reached')\n")
  env = {k: v for k, v in os.environ.items() if k not in (
      "GLIBC_TUNABLES", "JAXSEG_MALLOC_DEFAULTS", "LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ["before: -", "after: glibc.malloc.hugetlb=1",
                                     f"mimalloc mapped: {mimalloc_library() is not None}"]
