"""`jaxseg report RUN...`: figures and a table of one or many runs, as PNGs plus one
self-contained HTML page and a markdown file.

- learning_curves.png: train / val loss, val Dice and IoU against step, every run overlaid;
- comparison.png and the table: per-case mean (and std over cases) of Dice, IoU, precision,
  recall and HD95 per class, from `evaluation.CaseEvaluator` on the chosen split;
- masks_<run>.png: image, truth, prediction and their difference for the best, median and
  worst cases by Dice (the slice with the most labelled pixels of each case);
- features_<run>.png: activations of chosen layers for one input;
- volume_<run>.png (multi-class or 3-D data): axial slices with labels in colour.
A sweep's workdir stands for all its points.
"""

import base64
import html
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg.config import default_config  # noqa: E402
from jaxseg.evaluation import CaseEvaluator  # noqa: E402
from jaxseg.sweep import run_dirs  # noqa: E402

LABEL_COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [70, 110, 240],
                          [240, 200, 40], [200, 80, 220]], np.float32) / 255


def load_config(workdir: str):
  """The config a run was trained with (workdir/config.json), completed with today's defaults
  for keys added since."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no config.json; is it a jaxseg train workdir?")
  with open(path) as f:
    saved = json.load(f)
  merged = default_config().to_dict()

  def merge(base, new):
    for k, v in new.items():
      base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base

  return ml_collections.ConfigDict(merge(merged, saved))


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _run_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def plot_curves(runs: dict, path: str):
  fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
  panels = [("train", "loss", "train loss"), ("val", "loss", "val loss"),
            ("val", "dice", "val Dice"), ("val", "iou", "val IoU")]
  for ax, (split, key, title) in zip(axes, panels, strict=True):
    for name, records in runs.items():
      pts = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
      if pts:
        ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, ms=3,
                label=name)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_comparison(evals: dict, path: str):
  """Mean Dice and IoU per run and class, error bars the std over cases."""
  names = list(evals)
  classes = next(iter(evals.values()))["classes"]
  fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) * len(classes)), 3.8))
  width = 0.8 / len(classes)
  for ax, score in zip(axes, ("dice", "iou"), strict=True):
    for k, cls in enumerate(classes):
      means = [evals[n]["summary"][score]["mean"][k] for n in names]
      stds = [evals[n]["summary"][score]["std"][k] for n in names]
      ax.bar(np.arange(len(names)) + k * width, means, width, yerr=stds, capsize=3, label=cls)
    ax.set_xticks(np.arange(len(names)) + width * (len(classes) - 1) / 2)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"per-case {score} (mean, std over cases)")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _show_image(image: np.ndarray) -> np.ndarray:
  """Three channels (LGG's stacked sequences) as RGB; any other count (MRI modalities) as the
  first channel in grey, which reads better than a false-colour mix."""
  x = image if image.shape[-1] == 3 else image[..., :1].repeat(3, -1)
  lo, hi = np.percentile(x, 1), np.percentile(x, 99)
  return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)


def _colour(labels: np.ndarray, task: str) -> np.ndarray:
  """[H, W, k] mask -> RGB: class map colours, or one colour per binary channel."""
  if task == "multiclass":
    return LABEL_COLOURS[np.clip(labels[..., 0].astype(int), 0, len(LABEL_COLOURS) - 1)]
  out = np.zeros(labels.shape[:-1] + (3,), np.float32)
  for k in range(labels.shape[-1]):
    out[labels[..., k] > 0] = LABEL_COLOURS[1 + k % (len(LABEL_COLOURS) - 1)]
  return out


def _legend(fig, ev: CaseEvaluator):
  """Class colours, named, under the figure."""
  from matplotlib.patches import Patch
  handles = [Patch(color=LABEL_COLOURS[1 + k % (len(LABEL_COLOURS) - 1)], label=name)
             for k, name in enumerate(ev.classes)]
  fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def _best_slice(truth: np.ndarray, pred: np.ndarray) -> int:
  """Index of the slice (first axis) with the most labelled pixels in truth or prediction."""
  area = ((truth > 0) | (pred > 0)).reshape(len(truth), -1).sum(1)
  return int(area.argmax())


def plot_cases(ev: CaseEvaluator, result: dict, n: int, path: str, rank_by: str = "dice"):
  """Best, median and worst cases (then more, evenly spread) by class-mean Dice."""
  scores = {c: np.nanmean([s[rank_by] for s in per]) for c, per in result["cases"].items()}
  order = sorted(scores, key=lambda c: -scores[c])
  picks = [order[int(round(i))] for i in np.linspace(0, len(order) - 1, min(n, len(order)))]
  refs = {r.key: r for r in ev.volumes}
  task = ev.config.data.task
  fig, axes = plt.subplots(len(picks), 4, figsize=(12, 3.1 * len(picks)), squeeze=False)
  for row, case in zip(axes, picks, strict=True):
    image, truth, probs = ev.predict(refs[case])
    pred = ev.labels(probs)
    if image.ndim == 3:  # one 2-D image: a stack of one
      image, truth, pred = image[None], truth[None], pred[None]
    z = _best_slice(truth, pred)
    t, p = truth[z], pred[z]
    diff = np.zeros(t.shape[:-1] + (3,), np.float32)  # missed: blue, false alarm: red
    tb, pb = t.max(-1) > 0, p.max(-1) > 0
    diff[tb & ~pb] = (0.2, 0.4, 1.0)
    diff[pb & ~tb] = (1.0, 0.25, 0.25)
    diff[pb & tb] = (0.85, 0.85, 0.85)
    panels = [(_show_image(image[z]), "image"), (_colour(t, task), "truth"),
              (_colour(p, task), "prediction"), (diff, "difference (FN blue, FP red)")]
    for ax, (img, title) in zip(row, panels, strict=True):
      ax.imshow(img, interpolation="nearest")
      ax.set_title(title, fontsize=9)
      ax.axis("off")
    row[0].set_ylabel(case)
    row[0].set_title(f"{case} slice {z}: Dice {scores[case]:.3f}", fontsize=9)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  _legend(fig, ev)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_features(ev: CaseEvaluator, layers, path: str, channels: int = 8):
  """The first `channels` feature maps of chosen top-level modules for one input (default: the
  first, middle and last block in call order, the 1x1 head left out)."""
  state = ev.states[0]
  image, _, _ = ev.predict(ev.volumes[0])
  x = image if image.ndim == len(ev.exp.input_shape) else image[len(image) // 2]
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  _, inter = ev.exp.model.apply(variables, jax.numpy.asarray(x[None]), train=False,
                                capture_intermediates=lambda m, _: len(m.path) == 1)
  called = [n for n in inter["intermediates"] if n != "head"]  # dict order = call order
  unknown = set(layers) - set(called)
  if unknown:
    raise ValueError(f"--layers {sorted(unknown)}: not top-level modules of the model; it has "
                     f"{called}")
  layers = list(layers) or [called[0], called[len(called) // 2], called[-1]]
  maps = {name: np.asarray(inter["intermediates"][name]["__call__"][0][0], np.float32)
          for name in layers}
  fig, axes = plt.subplots(len(layers), channels, figsize=(1.6 * channels, 1.8 * len(layers)),
                           squeeze=False)
  for row, name in zip(axes, layers, strict=True):
    fmap = maps[name]
    if fmap.ndim == 4:  # 3-D: the middle slice
      fmap = fmap[len(fmap) // 2]
    for k, ax in enumerate(row):
      if k < fmap.shape[-1]:
        ax.imshow(fmap[..., k], cmap="viridis")
      ax.axis("off")
    row[0].set_title(f"{name} {tuple(fmap.shape)}", fontsize=8, loc="left")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def plot_volume(ev: CaseEvaluator, path: str, slices: int = 4):
  """Axial slices of the first case with truth and prediction labels in colour."""
  image, truth, probs = ev.predict(ev.volumes[0])
  if image.ndim == 3:
    return False
  pred = ev.labels(probs)
  task = ev.config.data.task
  labelled = np.flatnonzero((truth > 0).reshape(len(truth), -1).any(1))
  zs = labelled if len(labelled) else np.arange(len(truth))
  zs = zs[np.linspace(0, len(zs) - 1, min(slices, len(zs))).round().astype(int)]
  fig, axes = plt.subplots(2, len(zs), figsize=(3 * len(zs), 6.2), squeeze=False)
  for col, z in enumerate(zs):
    base = _show_image(image[z])
    for row, (labels, title) in enumerate(((truth, "truth"), (pred, "prediction"))):
      colour = _colour(labels[z], task)
      on = colour.max(-1, keepdims=True) > 0
      axes[row, col].imshow(np.where(on, 0.45 * base + 0.55 * colour, base))
      axes[row, col].set_title(f"{ev.volumes[0].key} z={z} {title}", fontsize=8)
      axes[row, col].axis("off")
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  _legend(fig, ev)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return True


def _cell(summary: dict, score: str, k: int) -> str:
  mean, std = summary[score]["mean"][k], summary[score]["std"][k]
  return f"{mean:.3f} ± {std:.3f}" if np.isfinite(mean) else "n/a"


def _table(evals: dict, best: dict) -> list[list[str]]:
  rows = [["run", "class", "best step", "val Dice (pooled)", "Dice", "IoU", "precision",
           "recall", "HD95", "cases"]]
  for name, ev in evals.items():
    s = ev["summary"]
    for k, cls in enumerate(ev["classes"]):
      rows.append([name, cls, str(best[name][0]), f"{best[name][1]:.4f}",
                   *(_cell(s, score, k) for score in ("dice", "iou", "precision", "recall",
                                                      "hd95")),
                   str(s["num_cases"])])
  return rows


def write_report(workdirs, output: str, split: str = "val", cases: int = 3,
                 layers=()) -> dict:
  """Writes the figures, report.md and report.html into `output`; returns {name: path}."""
  os.makedirs(output, exist_ok=True)
  dirs = [d for w in workdirs for d in run_dirs(w)]
  runs = {_run_name(d): read_metrics(d) for d in dirs}
  files = {"learning_curves": os.path.join(output, "learning_curves.png")}
  plot_curves(runs, files["learning_curves"])
  evals, best = {}, {}
  for d in dirs:
    name = _run_name(d)
    ev = CaseEvaluator(load_config(d), d, split)
    result = ev.run(write=False)
    if not result["cases"]:
      print(f"{name}: the {split} split is empty; no per-case figures")
      continue
    evals[name] = result
    val = [r for r in runs[name] if r["split"] == "val"]
    top = max(val, key=lambda r: r["dice"]) if val else {"step": result["checkpoints"][0],
                                                         "dice": float("nan")}
    best[name] = (top["step"], top["dice"])
    for kind, fn in (("masks", lambda p, ev=ev, r=result: plot_cases(ev, r, cases, p)),
                     ("features", lambda p, ev=ev: plot_features(ev, layers, p)),
                     ("volume", lambda p, ev=ev: plot_volume(ev, p))):
      path = os.path.join(output, f"{kind}_{name}.png")
      if fn(path) is not False:
        files[f"{kind}_{name}"] = path
  if evals:
    files["comparison"] = os.path.join(output, "comparison.png")
    plot_comparison(evals, files["comparison"])
  rows = _table(evals, best) if evals else [["no run had a non-empty split"]]
  with open(os.path.join(output, "results.json"), "w") as f:
    json.dump({n: {k: v for k, v in e.items()} for n, e in evals.items()}, f, indent=1)
  _write_markdown(output, split, rows, files)
  _write_html(output, split, rows, files)
  print(f"wrote report of {len(dirs)} run(s) to {output}/report.html")
  return files


def _write_markdown(output, split, rows, files):
  lines = [f"# jaxseg report ({split} split)", "",
           "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
  lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
  for key, path in files.items():
    lines += ["", f"## {key.replace('_', ' ')}", "", f"![{key}]({os.path.basename(path)})"]
  with open(os.path.join(output, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _write_html(output, split, rows, files):
  """One file with the PNGs inlined (base64), so it can be mailed or attached as is."""
  head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                 for r in rows[1:])
  parts = [f"<h1>jaxseg report ({html.escape(split)} split)</h1>",
           f"<table border=1 cellspacing=0 cellpadding=4><tr>{head}</tr>{body}</table>"]
  for key, path in files.items():
    with open(path, "rb") as f:
      data = base64.b64encode(f.read()).decode()
    parts.append(f"<h2>{html.escape(key.replace('_', ' '))}</h2>"
                 f"<img src='data:image/png;base64,{data}' style='max-width:100%'>")
  with open(os.path.join(output, "report.html"), "w") as f:
    f.write("<!doctype html><meta charset=utf-8><title>jaxseg report</title>"
            "<body style='font-family:sans-serif'>" + "".join(parts) + "</body>")
