"""`jaxseg evaluate` and `jaxseg predict`: a saved checkpoint applied to a split or to files."""

import json
import os

import jax
import numpy as np
from PIL import Image

from jaxseg.data.pipeline import pad_batch
from jaxseg.data.sources.lgg import read_tif
from jaxseg.data.transforms import Preprocess, resize
from jaxseg.errors import DataError
from jaxseg.train.experiment import Experiment

IMAGE_EXTS = (".tif", ".tiff", ".png")


def _restore(exp: Experiment, which: str):
  if not exp.checkpoints.all_steps():
    raise FileNotFoundError(f"{exp.checkpoints.directory}: no checkpoint to {which!r}; "
                            "train first (jaxseg train) with this --workdir")
  step = exp.checkpoints.resolve(which)
  state, _ = exp.checkpoints.restore(step, exp.init_state())
  return state, step


def evaluate_checkpoint(config, workdir: str, split: str = "val", which: str = "best") -> dict:
  """Scores one split with a checkpoint; also writes workdir/eval_<split>_<step>.json."""
  exp = Experiment(config, workdir)
  state, step = _restore(exp, which)
  result = {"split": split, "step": step, **exp.evaluate(state, exp.sources()[split])}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{split}_{step}.json"), "w") as f:
      json.dump(result, f, indent=1)
  return result


def list_images(inputs) -> list[str]:
  """Image files named directly or found under folders; `*_mask.*` files are ground truth."""
  files = []
  for path in inputs:
    if os.path.isdir(path):
      for folder, _, names in sorted(os.walk(path)):
        files += [os.path.join(folder, n) for n in sorted(names) if _is_image(n)]
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise DataError(f"{path}: no such file or folder")
  if not files:
    raise DataError(f"no {'/'.join(IMAGE_EXTS)} images found in {list(inputs)}")
  return files


def _is_image(name: str) -> bool:
  stem, ext = os.path.splitext(name)
  return ext.lower() in IMAGE_EXTS and not stem.endswith("_mask")


def read_image(path: str) -> np.ndarray:
  """Any supported image as [H, W, C]."""
  if path.lower().endswith(".png"):
    try:
      with Image.open(path) as im:
        image = np.asarray(im)
    except Exception as e:
      raise DataError(f"{path}: unreadable PNG ({type(e).__name__}: {e})") from e
  else:
    image = read_tif(path)
  return image[..., None] if image.ndim == 2 else image


def _ground_truth(path: str):
  stem, ext = os.path.splitext(path)
  for candidate in (f"{stem}_mask{ext}", f"{stem}_mask.tif", f"{stem}_mask.png"):
    if os.path.isfile(candidate):
      return read_image(candidate)[..., 0] > 0
  return None


def _to_rgb(image: np.ndarray) -> np.ndarray:
  rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, -1)
  rgb = rgb.astype(np.float32)
  lo, hi = rgb.min(), rgb.max()
  return ((rgb - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)


def _tint(rgb: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
  out = rgb.astype(np.float32)
  out[mask] = 0.5 * out[mask] + 0.5 * np.array(color, np.float32)
  return out.astype(np.uint8)


def overlay_panel(image: np.ndarray, pred: np.ndarray, truth=None) -> np.ndarray:
  """image | ground truth in green (if known) | prediction in red, side by side."""
  rgb = _to_rgb(image)
  panels = [rgb] + ([_tint(rgb, truth, (0, 255, 0))] if truth is not None else [])
  panels.append(_tint(rgb, pred, (255, 0, 0)))
  return np.concatenate(panels, axis=1)


def predict_files(config, workdir: str, inputs, output: str, which: str = "best",
                  overlay: bool = False) -> list[str]:
  """Writes `<name>_pred.png` masks (0/255, the input's size) for every input image."""
  exp = Experiment(config, workdir)
  state, _ = _restore(exp, which)
  files = list_images(inputs)
  os.makedirs(output, exist_ok=True)
  prep = Preprocess.from_config(config.data)
  bs = config.data.eval_batch_size
  task, thr = config.data.task, config.train.threshold
  written = []
  for start in range(0, len(files), bs):
    chunk = files[start:start + bs]
    images = [read_image(p) for p in chunk]
    for p, im in zip(chunk, images, strict=False):
      if im.shape[-1] != config.data.in_channels:
        raise DataError(f"{p}: {im.shape[-1]} channels; the model takes "
                        f"{config.data.in_channels}")
    items = [prep.map({"image": im, "mask": np.zeros(im.shape[:2] + (1,), np.float32)})
             for im in images]
    batch = pad_batch([{"image": x["image"]} for x in items], bs)
    probs = np.asarray(jax.device_get(exp.predict_fn(state, exp.to_device(batch["image"]))))
    for i, (path, image) in enumerate(zip(chunk, images, strict=False)):
      prob = resize(probs[i], image.shape[:2], nearest=False)
      if task == "multiclass":
        mask = prob.argmax(-1).astype(np.uint8)
      else:
        mask = (prob > thr).astype(np.uint8) * 255
        mask = mask[..., 0] if mask.shape[-1] == 1 else mask
      stem = os.path.splitext(os.path.basename(path))[0]
      out = os.path.join(output, f"{stem}_pred.png")
      Image.fromarray(mask).save(out)
      written.append(out)
      if overlay:
        pred = mask > 0 if mask.ndim == 2 else mask.max(-1) > 0
        panel = overlay_panel(image, pred, _ground_truth(path))
        Image.fromarray(panel).save(os.path.join(output, f"{stem}_overlay.png"))
  print(f"wrote {len(written)} masks to {output}")
  return written
