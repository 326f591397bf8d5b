"""Per-case evaluation (`jaxseg evaluate --per_case`): every volume of a split predicted whole
(slices stacked, or a 3-D sample, windowed when larger than the training patch), optionally
with flip TTA and a checkpoint ensemble, scored per class with `case_metrics`.

Writes eval_<split>_cases.json (per-case scores and their mean / std / median) and
eval_<split>_cases.csv (one row per case and class) into the workdir.
"""

import csv
import json
import os

import jax
import numpy as np

from jaxseg import case_metrics
from jaxseg.data.pipeline import pad_batch
from jaxseg.data.sample_cache import PreprocessedSource, resolve_folder
from jaxseg.data.transforms import Preprocess
from jaxseg.inference import make_probabilities, sliding_window
from jaxseg.train.checkpoint import Checkpoints
from jaxseg.train.experiment import Experiment


def class_names(source, config) -> list[str]:
  names = getattr(source, "class_names", None)
  if names:
    return list(names)
  k = config.data.num_classes - (1 if config.data.task == "multiclass" else 0)
  return [f"class{i + 1}" for i in range(k)]


class CaseEvaluator:
  """Predicts and scores whole volumes of one split with one or more checkpoints.

  `checkpoints`: entries 'best', 'latest' or a step of this workdir, or another workdir of the
  same model as 'path' or 'path:best|latest|STEP'; their probabilities are averaged."""

  def __init__(self, config, workdir: str, split: str = "val", checkpoints=("best",),
               tta: bool = False, overlap: float = 0.5):
    if jax.process_count() > 1:
      raise RuntimeError("per-case evaluation runs in one process (all its local devices)")
    self.config, self.workdir, self.split = config, workdir, split
    self.exp = Experiment(config, workdir)
    self.source = self.exp.sources()[split]
    template = self.exp.init_state()  # one init (and its compile) for every checkpoint
    self.states, self.steps = zip(*(self._restore(spec, template) for spec in checkpoints),
                                  strict=True)
    self.probabilities = make_probabilities(self.exp.predict_fn, tta)
    self.samples = PreprocessedSource(self.source, Preprocess.from_config(config.data),
                                      resolve_folder(config.data.sample_cache))
    self.overlap, self.tta = overlap, tta
    self.volumes = self.source.scored_volumes(config.data.image_size) if len(self.source) else []
    self.classes = class_names(self.source, config)

  def _restore(self, spec: str, template):
    path, _, which = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if not path and os.path.isdir(which):
      path, which = which, "best"
    ckpt = Checkpoints(os.path.join(path, "checkpoints"), read_only=True) if path else \
        self.exp.checkpoints
    if not ckpt.all_steps():
      raise FileNotFoundError(f"{ckpt.directory}: no checkpoint for {spec!r}; train first")
    step = ckpt.resolve(which)
    state, _ = ckpt.restore(step, template)
    return state, f"{path + ':' if path else ''}{step}"

  def _predict_batch(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(jax.device_get(
        self.probabilities(self.states, self.exp.to_device(images))))

  def predict(self, ref):
    """(image [*spatial, C], truth, probabilities [*spatial, K]) of one volume."""
    items = [self.samples[i] for i in ref.indices]
    bs = self.config.data.eval_batch_size
    patch = self.exp.input_shape[:-1]
    if len(items) == 1 and items[0]["image"].ndim == len(patch) + 1 and \
        items[0]["image"].shape[:-1] != tuple(patch):
      image = items[0]["image"]
      probs = sliding_window(self._predict_batch, image, patch, self.overlap, bs)
      return image, items[0]["mask"], probs
    probs = []
    for start in range(0, len(items), bs):
      chunk = items[start:start + bs]
      probs.append(self._predict_batch(pad_batch([{"image": x["image"]} for x in chunk],
                                                 bs)["image"])[:len(chunk)])
    probs = np.concatenate(probs)
    if len(items) == 1:  # one 3-D sample of the patch size
      return items[0]["image"], items[0]["mask"], probs[0]
    return (np.stack([x["image"] for x in items]), np.stack([x["mask"] for x in items]), probs)

  def labels(self, probs: np.ndarray) -> np.ndarray:
    """Probabilities -> the mask layout of the data (class map [..., 1] or channels)."""
    if self.config.data.task == "multiclass":
      return probs.argmax(-1)[..., None]
    return (probs > self.config.train.threshold).astype(np.uint8)

  def scores(self, ref, truth, probs) -> list[dict]:
    return case_metrics.case_scores(self.labels(probs), truth, self.config.data.task,
                                    self.config.data.num_classes, ref.spacing)

  def run(self, write: bool = True) -> dict:
    per_case = {}
    for ref in self.volumes:
      _, truth, probs = self.predict(ref)
      per_case[ref.key] = self.scores(ref, truth, probs)
    result = {"split": self.split, "checkpoints": list(self.steps), "classes": self.classes,
              "tta": self.tta,
              "summary": case_metrics.aggregate(per_case) if per_case else {},
              "cases": per_case}
    if write:
      self.write(result)
    return result

  def write(self, result: dict):
    stem = os.path.join(self.workdir, f"eval_{self.split}_cases")
    with open(stem + ".json", "w") as f:
      json.dump(result, f, indent=1)
    with open(stem + ".csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["case", "class", *case_metrics.SCORES])
      for case, per_class in result["cases"].items():
        for name, s in zip(self.classes, per_class, strict=True):
          w.writerow([case, name, *(f"{s[k]:.6g}" for k in case_metrics.SCORES)])


def write_submission(config, workdir: str, split: str, path: str, checkpoints=("best",),
                     tta: bool = False) -> int:
  """UW-Madison GI: predicts every slice of a split and writes the competition's CSV
  (`id,class,predicted`, RLE of the mask at the slice's original size, '' when empty), one row
  per slice and organ. Returns the number of rows."""
  ev = CaseEvaluator(config, workdir, split, checkpoints, tta)
  if not hasattr(ev.source, "record"):
    raise ValueError(f"--submission needs the GI data (data.source=gi), not "
                     f"{config.data.source!r}")
  from jaxseg.data import rle
  from jaxseg.data.transforms import resize
  rows = 0
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "class", "predicted"])
    for ref in ev.volumes:
      _, _, probs = ev.predict(ref)
      for i, p in zip(ref.indices, probs, strict=True):
        rec = ev.source.record(i)
        masks = ev.labels(resize(p, rec.shape, nearest=False))
        for k, name in enumerate(ev.classes):
          w.writerow([rec.id, name, rle.encode(masks[..., k])])
          rows += 1
  return rows
