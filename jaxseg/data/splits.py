"""Patient-level splits: seeded, optionally stratified, saved beside the run.

Splits are made over case ids (patients / volumes), never over slices, so no patient's slices
land in two splits. The split is written to the workdir on the first run and read back by every
later run, evaluation and prediction in that workdir.
"""

import json
import os

import jax
import numpy as np

from jaxseg.errors import DataError

SPLIT_FILE = "split.json"


def split_cases(case_ids, val: float, test: float, seed: int, strata=None, folds: int = 0,
                fold: int = 0) -> dict:
  """Assigns each case to train / val / test.

  With `strata` (case id -> label), each label's cases are split in the same proportions, so
  every split keeps the label balance of the whole set (up to rounding). With `folds` = K > 1,
  K-fold cross-validation: the test cases are held out as usual (the same for every fold), the
  rest are dealt into K stratified folds, and fold `fold` is the validation set (`val` unused).
  """
  case_ids = sorted(case_ids)
  if folds > 1:
    return _kfold(case_ids, test, seed, strata, folds, fold)
  if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
    raise ValueError(f"split fractions val={val} test={test} must be in [0, 1) with sum < 1")
  rng = np.random.default_rng(seed)
  groups = {}
  for c in case_ids:
    groups.setdefault(strata[c] if strata else 0, []).append(c)
  out = {"train": [], "val": [], "test": []}
  for key in sorted(groups):
    members = list(groups[key])
    rng.shuffle(members)
    n_val = int(round(val * len(members)))
    n_test = int(round(test * len(members)))
    out["val"] += members[:n_val]
    out["test"] += members[n_val:n_val + n_test]
    out["train"] += members[n_val + n_test:]
  # Rounding per stratum can leave a requested split empty on small sets: move one case over.
  for name, frac in (("val", val), ("test", test)):
    if frac > 0 and not out[name]:
      if len(out["train"]) <= 1:
        raise DataError(f"only {len(case_ids)} cases: too few for train, val and test splits")
      out[name].append(out["train"].pop())
  if not out["train"]:
    raise DataError(f"only {len(case_ids)} cases: too few for a training split")
  return {k: sorted(v) for k, v in out.items()}


def _kfold(case_ids, test: float, seed: int, strata, folds: int, fold: int) -> dict:
  if not 0 <= fold < folds:
    raise ValueError(f"data.split.fold={fold} with {folds} folds: must be in [0, {folds})")
  if not 0 <= test < 1:
    raise ValueError(f"split fraction test={test} must be in [0, 1)")
  rng = np.random.default_rng(seed)
  groups = {}
  for c in case_ids:
    groups.setdefault(strata[c] if strata else 0, []).append(c)
  out, dealt = {"train": [], "val": [], "test": []}, 0
  for key in sorted(groups):
    members = list(groups[key])
    rng.shuffle(members)
    n_test = int(round(test * len(members)))
    out["test"] += members[:n_test]
    for c in members[n_test:]:  # round-robin across strata keeps fold sizes within one
      out["val" if dealt % folds == fold else "train"].append(c)
      dealt += 1
  if not out["val"] or not out["train"]:
    raise DataError(f"{len(case_ids)} cases are too few for {folds}-fold cross-validation")
  return {k: sorted(v) for k, v in out.items()}


def load_or_make_split(workdir: str, case_ids, split_cfg, strata_fn) -> dict:
  """Reads workdir/split.json, or makes the split and writes it there."""
  path = os.path.join(workdir, SPLIT_FILE) if workdir else ""
  if path and os.path.exists(path):
    with open(path) as f:
      split = json.load(f)
    missing = sorted(set(sum(split.values(), [])) - set(case_ids))
    if missing:
      raise DataError(f"{path}: names cases not in the dataset: {missing[:5]}")
    return split
  strata = strata_fn() if split_cfg.stratify else None
  # Every process computes the same split from the same seed; only process 0 writes it.
  split = split_cases(case_ids, split_cfg.val, split_cfg.test, split_cfg.seed, strata,
                      split_cfg.get("folds", 0), split_cfg.get("fold", 0))
  if path and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump(split, f, indent=1)
    os.replace(tmp, path)
  return split
