"""A change measured against a commit: each listed model's train step timed in fresh processes,
alternating the commit (checked out by `git worktree` into a temporary folder) and this working
tree, keeping each side's best (this machine drifts by up to 10 % between runs). For changes
that layers_ab.py has no switch for (a change to the train step itself, say).

  .venv/bin/python benchmarks/commits_ab.py --before=HEAD --models=unet:32:128,resunet:32:128
  .venv/bin/python benchmarks/commits_ab.py --before=e834657 --models=unext:16:256 --pairs=4
  .venv/bin/python benchmarks/commits_ab.py --before=HEAD --dtype=bfloat16

Each model is NAME:FEATURES:SIZE (a registry name, model.features, the square input side). Both
sides run the default configuration of their own code, batch --batch, model.dtype --dtype, in the
same Python environment (this one's). Writes results/commits_ab-DATE-HHMM-DEVICE-BEFORE.{md,json}
(UTC).
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from jaxseg.allocator import reexec_with_malloc_defaults

import result_files

_BEFORE = flags.DEFINE_string("before", None, "the commit to compare against (any git revision)",
                              required=True)
_MODELS = flags.DEFINE_list("models", ["unet:32:128"], "NAME:FEATURES:SIZE, ...")
_BATCH = flags.DEFINE_integer("batch", 8, "batch size")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per measurement (after 2 warm-up steps)")
_PAIRS = flags.DEFINE_integer("pairs", 3, "before / after measurements per model, alternating")
_DTYPE = flags.DEFINE_string("dtype", "auto", "model.dtype on both sides (auto, float32, bfloat16)")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"), "folder")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One measurement, run with the side's tree first on the path; prints its result as JSON.
_CHILD = """
import json, sys
import jax
from jaxseg.bench import bench_step
from jaxseg.config import default_config
name, features, size, batch, steps, dtype = json.loads(sys.argv[1])
c = default_config()
c.model.name, c.model.features, c.model.dtype = name, features, dtype
c.data.image_size, c.data.batch_size = size, batch
ms = bench_step(c, steps=steps, warmup=2)["ms_per_step"]
print(json.dumps({"ms": ms, "device": jax.devices()[0].device_kind}))
"""


def _git(*args, cwd=_REPO) -> str:
  return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                        text=True).stdout.strip()


def _measure(tree: str, spec: list) -> dict:
  env = dict(os.environ, PYTHONPATH=tree)
  env.pop("XLA_FLAGS", None)
  # Outside both trees, so that neither side imports the other's jaxseg from the working folder.
  out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env,
                       cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _parse(model: str) -> list:
  name, features, size = model.split(":")
  return [name, int(features), int(size)]


def main(argv):
  del argv
  before = _git("rev-parse", "--short", _BEFORE.value)
  after = _git("rev-parse", "--short", "HEAD") + (" + working tree" if _git("status",
                                                                           "--porcelain") else "")
  date, started = datetime.datetime.now(datetime.UTC), result_files.started()
  meta = {"date": date.strftime("%Y-%m-%d %H:%M UTC"), "before": before, "after": after,
          "command": " ".join(sys.argv), "batch": _BATCH.value, "steps": _STEPS.value,
          "pairs": _PAIRS.value, "dtype": _DTYPE.value}
  header = ["model", "features", "input", "before ms/step (best)", "after ms/step (best)",
            "speed-up", "before, each", "after, each"]
  rows, records = [], []
  with tempfile.TemporaryDirectory() as scratch:
    worktree = os.path.join(scratch, "before")
    _git("worktree", "add", "--detach", worktree, before)
    try:
      for model in _MODELS.value:
        spec = _parse(model) + [_BATCH.value, _STEPS.value, _DTYPE.value]
        ms = {"before": [], "after": []}
        for _ in range(_PAIRS.value):
          for side, tree in (("before", worktree), ("after", _REPO)):
            result = _measure(tree, spec)
            ms[side].append(result["ms"])
            meta["device"] = result["device"]
        b, a = min(ms["before"]), min(ms["after"])
        records.append({"model": spec[0], "features": spec[1], "size": spec[2], **ms})
        rows.append([spec[0], spec[1], spec[2], f"{b:.1f}", f"{a:.1f}", f"{b / a:.3f}x",
                     " / ".join(f"{v:.1f}" for v in ms["before"]),
                     " / ".join(f"{v:.1f}" for v in ms["after"])])
        print(f"{model}: {b:.0f} -> {a:.0f} ms ({b / a:.3f}x)", flush=True)
        markdown = (f"# {before} (before) against {after} (after), {meta['device']} "
                    f"({result_files.host_cpu()}), "
                    f"{meta['date']}\n\n`{meta['command']}`; model.dtype {_DTYPE.value}, "
                    f"batch {_BATCH.value}, {_STEPS.value} timed steps per fresh process, "
                    f"{_PAIRS.value} alternating pairs, best of each side.\n\n"
                    + result_files.table(header, rows))
        path = result_files.stem(_OUT.value, "commits_ab", started, meta["device"], before)
        result_files.write(path, {**meta, "rows": records}, markdown)
    finally:
      _git("worktree", "remove", "--force", worktree)
  print(f"wrote {path}.md")


if __name__ == "__main__":
  # As the jaxseg command runs (jaxseg/allocator.py): its allocator, which the child processes
  # inherit.
  reexec_with_malloc_defaults(command=[sys.executable, *sys.argv])
  app.run(main)
