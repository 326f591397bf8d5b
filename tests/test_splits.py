import json

import pytest
from ml_collections import ConfigDict

from jaxseg.data.splits import load_or_make_split, split_cases
from jaxseg.errors import DataError

CASES = [f"P{i:03d}" for i in range(100)]
STRATA = {c: int(i % 4 == 0) for i, c in enumerate(CASES)}  # 25 % positives


def test_split_is_a_partition_and_seeded():
  s = split_cases(CASES, 0.1, 0.2, seed=1)
  assert sorted(s["train"] + s["val"] + s["test"]) == CASES
  assert not set(s["train"]) & set(s["val"]) and not set(s["val"]) & set(s["test"])
  assert (len(s["val"]), len(s["test"])) == (10, 20)
  assert split_cases(CASES, 0.1, 0.2, seed=1) == s
  assert split_cases(CASES, 0.1, 0.2, seed=2) != s


def test_stratified_split_keeps_the_label_balance():
  s = split_cases(CASES, 0.2, 0.2, seed=0, strata=STRATA)
  for name in ("train", "val", "test"):
    frac = sum(STRATA[c] for c in s[name]) / len(s[name])
    assert frac == pytest.approx(0.25, abs=0.01), name


def test_small_sets_still_get_a_val_case():
  s = split_cases(["a", "b", "c"], 0.1, 0.0, seed=0)
  assert len(s["val"]) == 1 and len(s["train"]) == 2 and s["test"] == []
  with pytest.raises(DataError, match="too few"):
    split_cases(["a"], 0.5, 0.4, seed=0)
  with pytest.raises(ValueError, match="sum < 1"):
    split_cases(CASES, 0.6, 0.5, seed=0)


def test_split_is_saved_and_reused(tmp_path):
  cfg = ConfigDict({"val": 0.2, "test": 0.2, "stratify": True, "seed": 0})
  calls = []

  def strata():
    calls.append(1)
    return STRATA

  first = load_or_make_split(str(tmp_path), CASES, cfg, strata)
  assert json.loads((tmp_path / "split.json").read_text()) == first
  cfg.seed = 5  # ignored: the saved split wins, so evaluation sees the training split
  assert load_or_make_split(str(tmp_path), CASES, cfg, strata) == first
  assert len(calls) == 1
  with pytest.raises(DataError, match="names cases not in the dataset"):
    load_or_make_split(str(tmp_path), CASES[:10], cfg, strata)


def test_kfold_folds_partition_the_non_test_cases_and_keep_strata():
  from jaxseg.data.splits import split_cases
  cases = [f"p{i:02d}" for i in range(40)]
  strata = {c: int(i < 12) for i, c in enumerate(cases)}  # 12 positive, 28 negative
  splits = [split_cases(cases, 0.0, 0.2, seed=3, strata=strata, folds=4, fold=k)
            for k in range(4)]
  tests = {tuple(s["test"]) for s in splits}
  assert len(tests) == 1 and len(splits[0]["test"]) == 8  # one held-out test set for all folds
  vals = [set(s["val"]) for s in splits]
  rest = set(cases) - set(splits[0]["test"])
  assert set().union(*vals) == rest and sum(map(len, vals)) == len(rest)  # a partition
  for s in splits:
    assert not set(s["train"]) & set(s["val"]) and set(s["train"]) | set(s["val"]) == rest
    assert 7 <= len(s["val"]) <= 9
    assert 2 <= sum(strata[c] for c in s["val"]) <= 3  # ~ 12 * 0.8 / 4 positives per fold
  with pytest.raises(ValueError, match="fold=4 with 4 folds"):
    split_cases(cases, 0.0, 0.2, seed=3, folds=4, fold=4)
