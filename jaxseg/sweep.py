"""`jaxseg sweep`: a grid of config overrides, each point trained into its own sub-workdir.

The grid comes from `--sweep='optim.lr=[0.1,0.01];data.batch_size=[16,32]'` (the product of the
lists) or, without it, from the config file's `sweep()` function (a list of override dicts, as
in flax's and big_vision's configs). `WORKDIR/sweep.json` records the points. Each point runs
into `WORKDIR/<index>-<overrides>`; a point with a `result.json` is done and skipped, a point
with checkpoints but no result resumes from them, so rerunning the same command finishes a
half-done sweep. `--sweep_index=i` runs one point only: the unit for independent launches (one
job per point on a cluster).
"""

import ast
import copy
import itertools
import json
import os
import re

from jaxseg.errors import DataError


def parse_grid(text: str) -> list[dict]:
  """'a.b=[1,2];c=[x]' -> [{'a.b': 1, 'c': 'x'}, {'a.b': 2, 'c': 'x'}]."""
  axes = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    key, sep, values = part.partition("=")
    values = values.strip()
    if not sep or not (values.startswith("[") and values.endswith("]")):
      raise ValueError(f"--sweep: {part!r} is not KEY=[v1,v2,...]")
    items = [_literal(v.strip()) for v in values[1:-1].split(",") if v.strip()]
    if not items:
      raise ValueError(f"--sweep: {key.strip()!r} has no values")
    axes.append([(key.strip(), v) for v in items])
  return [dict(point) for point in itertools.product(*axes)]


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string such as batch or none


def point_name(index: int, overrides: dict) -> str:
  parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", f"{index:02d}-" + ",".join(parts))[:120]


def apply(config, overrides: dict):
  """A copy of `config` with dotted-key overrides; unknown keys and wrong types are errors."""
  c = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p] if p in node else _unknown(key)
    if leaf not in node:
      _unknown(key)
    node[leaf] = value
  return c


def _unknown(key):
  raise ValueError(f"sweep key {key!r} is not in the config")


def run_sweep(config, workdir: str, points: list[dict], index: int | None = None) -> list[dict]:
  """Trains every point (or point `index`) not yet done; returns the sweep table."""
  from jaxseg.train.loop import train_and_evaluate

  if not points:
    raise ValueError("empty sweep: pass --sweep=KEY=[...] or give the config a sweep()")
  configs = [apply(config, p) for p in points]  # every point checked before any training
  os.makedirs(workdir, exist_ok=True)
  table = [{"name": point_name(i, p), "overrides": p} for i, p in enumerate(points)]
  _check_same_grid(workdir, table)
  with open(os.path.join(workdir, "sweep.json"), "w") as f:
    json.dump({"points": table}, f, indent=1)
  chosen = range(len(points)) if index is None else [index]
  for i in chosen:
    if not 0 <= i < len(points):
      raise ValueError(f"--sweep_index={i}: the sweep has {len(points)} points")
    run_dir = os.path.join(workdir, table[i]["name"])
    done = os.path.join(run_dir, "result.json")
    if os.path.exists(done):
      print(f"sweep point {i} ({table[i]['name']}): done, skipped")
      continue
    print(f"sweep point {i}/{len(points)}: {table[i]['overrides']}")
    result = train_and_evaluate(configs[i], run_dir)
    with open(done + ".tmp", "w") as f:
      json.dump({k: v for k, v in result.items() if k != "cases"}, f, indent=1)
    os.replace(done + ".tmp", done)
  return collect(workdir)


def _check_same_grid(workdir: str, table: list[dict]):
  path = os.path.join(workdir, "sweep.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)["points"]
  if [p["name"] for p in old] != [p["name"] for p in table]:
    raise DataError(f"{path}: this workdir holds a different sweep ({len(old)} points, first "
                    f"{old[0]['name'] if old else '-'}); use a new --workdir")


def collect(workdir: str) -> list[dict]:
  """The sweep's points with their results (None while not done)."""
  with open(os.path.join(workdir, "sweep.json")) as f:
    table = json.load(f)["points"]
  for row in table:
    done = os.path.join(workdir, row["name"], "result.json")
    row["result"] = None
    if os.path.exists(done):
      with open(done) as f:
        row["result"] = json.load(f)
  return table


def run_dirs(workdir: str) -> list[str]:
  """A sweep's point folders (those that exist), or [workdir] for a single run."""
  if not os.path.exists(os.path.join(workdir, "sweep.json")):
    return [workdir]
  return [os.path.join(workdir, row["name"]) for row in collect(workdir)
          if os.path.isdir(os.path.join(workdir, row["name"]))]
