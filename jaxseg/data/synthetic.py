"""Synthetic datasets in the UW-Madison GI and Decathlon on-disk formats, for benchmarks and
for trying a config without the real data (`data.root=synthetic:N[:SIZE[:SLICES]]` with
`data.source=gi` or `decathlon`). They go through the same readers as the real files.
"""

import csv
import json
import os

import numpy as np
from PIL import Image

from jaxseg.data import rle
from jaxseg.data.sources.gi import CLASSES


def _blob(shape, rng, lo=0.2, hi=0.8, radius=(0.08, 0.2)):
  grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
  centre = rng.uniform(lo, hi, len(shape))
  r = rng.uniform(*radius)
  return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) < r * r


def write_gi(root: str, cases: int = 4, size: int = 64, slices: int = 8, seed: int = 0) -> str:
  """`cases` cases of one scan day each: 16-bit PNG slices (`size` square, 1.5 mm pixels) and a
  train.csv with an RLE per organ; each organ is present on about half the slices."""
  rng = np.random.default_rng(seed)
  rows = []
  for c in range(1, cases + 1):
    scan = f"case{c}_day1"
    folder = os.path.join(root, "train", f"case{c}", scan, "scans")
    os.makedirs(folder, exist_ok=True)
    for n in range(1, slices + 1):
      image = rng.normal(8000, 1500, (size, size))
      for k, name in enumerate(CLASSES):
        mask = _blob((size, size), rng) if rng.random() < 0.5 else None
        if mask is not None:
          image[mask] += 6000 * (k + 1)
        rows.append({"id": f"{scan}_slice_{n:04d}", "class": name,
                     "segmentation": rle.encode(mask) if mask is not None else ""})
      Image.fromarray(np.clip(image, 0, 65535).astype(np.uint16)).save(
          os.path.join(folder, f"slice_{n:04d}_{size}_{size}_1.50_1.50.png"))
  with open(os.path.join(root, "train.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, ["id", "class", "segmentation"])
    writer.writeheader()
    writer.writerows(rows)
  return root


def write_decathlon(root: str, cases: int = 4, size: int = 48, slices: int = 32,
                    seed: int = 0) -> str:
  """Task01-style 4-D NIfTI volumes (`size` x `size` x `slices` x 4 modalities, 1 mm) with
  nested tumour labels: edema (1) around a core (2) holding enhancing tumour (3)."""
  import nibabel as nib
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "imagesTr"), exist_ok=True)
  os.makedirs(os.path.join(root, "labelsTr"), exist_ok=True)
  shape = (size, size, slices)
  grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
  brain = sum(g**2 for g in grids) < 0.8
  training = []
  for i in range(1, cases + 1):
    name = f"BRATS_{i:03d}.nii.gz"
    centre = rng.uniform(-0.3, 0.3, 3)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)))
    label = np.zeros(shape, np.uint8)
    for value, radius in ((1, 0.35), (2, 0.2), (3, 0.1)):
      label[(dist < radius * rng.uniform(0.8, 1.2)) & brain] = value
    image = rng.normal(100, 15, shape + (4,)) * brain[..., None]
    image += (label[..., None] * np.array([30.0, 10.0, 50.0, 40.0])) * brain[..., None]
    nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)),
             os.path.join(root, "imagesTr", name))
    nib.save(nib.Nifti1Image(label, np.eye(4)), os.path.join(root, "labelsTr", name))
    training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
  meta = {"name": "BrainTumour (synthetic)",
          "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
          "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                     "3": "enhancing tumour"},
          "training": training}
  with open(os.path.join(root, "dataset.json"), "w") as f:
    json.dump(meta, f)
  return root
