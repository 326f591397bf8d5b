"""GI submission CSV from a trained checkpoint: one RLE row per slice and organ, at the slice's
original size, decoding to the model's thresholded prediction."""

import csv

import numpy as np

from jaxseg.config import default_config
from jaxseg.data import rle
from jaxseg.evaluation import CaseEvaluator, write_submission
from jaxseg.train.loop import train_and_evaluate


def test_submission_rows_decode_to_the_prediction(tmp_path):
  c = default_config()
  c.data.source, c.data.root = "gi", "synthetic:4:40:4"  # 40 x 40 originals
  c.data.image_size, c.data.in_channels, c.data.num_classes = 32, 1, 3
  c.data.task, c.data.batch_size, c.data.eval_batch_size = "multilabel", 4, 4
  c.data.split.val, c.data.split.test = 0.25, 0.25
  c.model.features, c.model.depth = 4, 2
  c.train.steps, c.train.eval_every, c.optim.lr = 20, 20, 1e-2
  c.train.threshold = 0.3  # some positives from a barely trained model
  work = str(tmp_path / "run")
  train_and_evaluate(c, work)
  out = str(tmp_path / "sub.csv")
  n = write_submission(c, work, "test", out)
  with open(out) as f:
    rows = list(csv.DictReader(f))
  ev = CaseEvaluator(c, work, "test")
  recs = [ev.source.record(i) for i in range(len(ev.source))]
  assert n == len(rows) == 3 * len(recs)
  assert {r["id"] for r in rows} == {rec.id for rec in recs}
  assert {r["class"] for r in rows} == {"large_bowel", "small_bowel", "stomach"}
  # Each RLE decodes at the original 40 x 40 size to the resized, thresholded probabilities.
  from jaxseg.data.transforms import resize
  by_id = {(r["id"], r["class"]): r["predicted"] for r in rows}
  ref = ev.volumes[0]
  _, _, probs = ev.predict(ref)
  rec = ev.source.record(ref.indices[0])
  want = (resize(probs[0], rec.shape, nearest=False) > 0.3).astype(np.uint8)
  for k, name in enumerate(ev.classes):
    np.testing.assert_array_equal(rle.decode(by_id[(rec.id, name)], rec.shape), want[..., k])
  assert any(r["predicted"] for r in rows)
