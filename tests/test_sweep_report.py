"""`jaxseg sweep` (grid into sub-workdirs, resumable) and `jaxseg report` (figures + tables)."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from jaxseg import sweep
from jaxseg.report import write_report


def test_parse_grid_is_the_product_of_the_lists():
  points = sweep.parse_grid("optim.lr=[0.1, 1e-4]; data.batch_size=[16,32]; model.norm=[none]")
  assert points == [{"optim.lr": 0.1, "data.batch_size": 16, "model.norm": "none"},
                    {"optim.lr": 0.1, "data.batch_size": 32, "model.norm": "none"},
                    {"optim.lr": 1e-4, "data.batch_size": 16, "model.norm": "none"},
                    {"optim.lr": 1e-4, "data.batch_size": 32, "model.norm": "none"}]
  with pytest.raises(ValueError, match="KEY=\\[v1,v2"):
    sweep.parse_grid("optim.lr=0.1")
  with pytest.raises(ValueError, match="'optim.nope' is not in the config"):
    sweep.apply(tiny_config("x"), {"optim.nope": 1})
  assert sweep.point_name(3, {"optim.lr": 0.1, "model.norm": "none"}) == "03-lr=0.1,norm=none"


def _png(path):
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def test_sweep_resumes_and_report_writes_every_figure(lgg_root, tmp_path):
  c = tiny_config(lgg_root)
  c.train.steps, c.train.eval_every, c.train.log_every = 4, 2, 2
  c.data.split.val = 0.4  # several validation patients: best, median and worst differ
  points = sweep.parse_grid("optim.lr=[3e-3,1e-3]")
  work = str(tmp_path / "sweep")
  # One independent launch (point 0), then the whole sweep: point 0 is skipped, point 1 runs.
  sweep.run_sweep(c, work, points, index=0)
  first = os.path.join(work, "00-lr=0.003")
  before = open(os.path.join(first, "metrics.jsonl")).read()  # noqa: SIM115
  assert not os.path.exists(os.path.join(work, "01-lr=0.001"))
  table = sweep.run_sweep(c, work, points)
  assert open(os.path.join(first, "metrics.jsonl")).read() == before  # noqa: SIM115
  assert [r["name"] for r in table] == ["00-lr=0.003", "01-lr=0.001"]
  assert all(0 <= r["result"]["dice"] <= 1 for r in table)
  with pytest.raises(Exception, match="different sweep"):
    sweep.run_sweep(c, work, sweep.parse_grid("optim.lr=[1.0]"))

  out = str(tmp_path / "report")
  files = write_report([work], out, split="val", cases=2)
  names = {"learning_curves", "comparison", "masks_00-lr=0.003", "features_00-lr=0.003",
           "volume_00-lr=0.003", "volume_01-lr=0.001",  # LGG patients are slice stacks
           "masks_01-lr=0.001", "features_01-lr=0.001"}
  assert set(files) == names
  sizes = {"learning_curves": (324, 1440), "comparison": (342, 720)}
  for key, path in files.items():
    img = _png(path)
    assert img.std() > 5, key  # not a blank canvas
    if key in sizes:
      assert img.shape[:2] == sizes[key], (key, img.shape)
  results = json.load(open(os.path.join(out, "results.json")))  # noqa: SIM115
  assert set(results) == {"00-lr=0.003", "01-lr=0.001"}
  assert results["00-lr=0.003"]["summary"]["num_cases"] >= 2
  assert _png(files["masks_00-lr=0.003"]).shape[:2] == (int(2 * 3.1 * 80), 12 * 80)  # 2 rows
  md = open(os.path.join(out, "report.md")).read()  # noqa: SIM115
  assert "| 00-lr=0.003 | tumour |" in md and "HD95" in md
  page = open(os.path.join(out, "report.html")).read()  # noqa: SIM115
  assert page.count("data:image/png;base64,") == len(files)
