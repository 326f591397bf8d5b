"""GI-tract transfer schedule: phase 1 (encoder frozen) then phase 2 from phase 1's checkpoint
with only the encoder's last stage unfrozen, on the GI data format, via the shipped config."""

import json
import os

import jax
import numpy as np
from test_gi_source import LABELS, _write_gi

from configs import gi_unetpp_effb3
from jaxseg.models.encoders import EfficientNetB3Encoder
from jaxseg.train.checkpoint import Checkpoints
from jaxseg.train.loop import train_and_evaluate


def _shrink(c, root):
  c.data.root = root
  c.data.split.val, c.data.split.test = 0.5, 0.0
  c.data.image_size, c.data.batch_size, c.data.eval_batch_size = 32, 2, 2
  c.data.num_workers = 0
  c.model.features = 4
  c.train.steps, c.train.eval_every, c.train.log_every = 2, 2, 1
  return c


def _state(workdir):
  ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  return ckpt.read(ckpt.latest_step())[0]


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                  strict=True))


def test_phase2_starts_from_phase1_and_trains_only_the_last_stage(tmp_path, monkeypatch):
  # One block per stage instead of B3's 26 in all: the same stages and names, a third of the
  # compile time. The full encoder is checked against torch in test_pretrained.
  monkeypatch.setattr(EfficientNetB3Encoder, "DEPTH", 0.01)
  root = _write_gi(tmp_path / "gi", labels=LABELS)
  one, two = str(tmp_path / "phase1"), str(tmp_path / "phase2")
  c1 = _shrink(gi_unetpp_effb3.get_config("1"), root)
  c1.optim.lr = 1e-2
  train_and_evaluate(c1, one)
  c2 = _shrink(gi_unetpp_effb3.get_config("2"), root)
  c2.init_from = one
  c2.optim.step_every = 1  # decay every step, to see the step schedule within two steps
  c2.optim.lr = 1e-3
  train_and_evaluate(c2, two)

  with open(os.path.join(one, "metrics.jsonl")) as f:
    losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
  assert losses[1] < losses[0], losses  # the decoder learns with the encoder frozen
  s1, s2 = _state(one), _state(two)
  for col in ("params", "batch_stats"):
    enc1, enc2 = s1[col]["encoder"], s2[col]["encoder"]
    assert {m.split("_")[1] for m in enc1} == set("01234567")  # stem + 7 stages, no head conv
    assert len(enc1) == (9 if col == "params" else 8)  # conv + BN stem, 7 blocks
    for module in enc1:  # stem .. stage6 exactly as phase 1 left them; stage7 trained on
      assert _equal(enc1[module], enc2[module]) == (not module.startswith("features_7_")), \
          (col, module)
  # Phase 2 continued from phase 1's weights: a fresh init would differ by O(1), two steps at a
  # small learning rate move the decoder head by far less.
  k1, k2 = (np.asarray(s["params"]["head"]["kernel"]) for s in (s1, s2))
  assert 0 < np.abs(k1 - k2).max() < 0.05
  with open(os.path.join(two, "metrics.jsonl")) as f:
    lrs = [r["lr"] for r in map(json.loads, f) if r["split"] == "train"]
  assert len(lrs) == 2 and np.isclose(lrs[0], 1e-3) and np.isclose(lrs[1], 0.9e-3), lrs
