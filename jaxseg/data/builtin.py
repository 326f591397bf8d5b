"""Datasets that come with the install, written in the real LGG (`kaggle_3m`) layout.

- `builtin:mni152` — the embedded default dataset. Real MRI: the MNI152 2009c symmetric T1
  template and its white-matter probability map, both shipped inside the `nilearn` wheel
  (`nilearn/datasets/data/`). Each slice becomes a 256x256 three-channel image (the slice and its
  two neighbours, the way LGG stacks three sequences) with the white matter (probability > 0.5)
  as the mask. "Patients" are contiguous slabs of one orientation (axial, coronal, sagittal), so
  a patient-level split holds out whole brain regions. It is one template brain: a real but small
  task, good for a demo and for checking the pipeline end to end, not for reporting accuracy.
- `synthetic:N` — N synthetic patients of bright blobs on noisy ellipses, for tests and benchmarks.

Both are written once (to `$JAXSEG_DATA_DIR`, default `~/.cache/jaxseg`, or the workdir for
synthetic data) and then read back through the same `LGGSource` users run on the real data.
"""

import os
import shutil

import numpy as np
import tifffile

SIZE = 256
_MNI_SLABS = 4  # patients per orientation
_MNI_STEP = 2  # keep every 2nd slice: neighbours are near-duplicates


def data_dir() -> str:
  return os.environ.get("JAXSEG_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxseg"))


def _write_slice(folder: str, case_id: str, n: int, image: np.ndarray, mask: np.ndarray):
  tifffile.imwrite(os.path.join(folder, f"{case_id}_{n}.tif"), image, photometric="rgb")
  tifffile.imwrite(os.path.join(folder, f"{case_id}_{n}_mask.tif"), mask)


def _partial(root: str) -> str:
  # Each process writes its own temporary folder and renames it into place, so an interrupted
  # build never looks complete and several processes (hosts) building at once do not collide.
  return f"{root}.partial-{os.uname().nodename}-{os.getpid()}"


def _finish(root: str, tmp: str):
  try:
    os.rename(tmp, root)
  except OSError:  # another process finished first: its copy is identical
    if not os.path.isdir(root):
      raise
    shutil.rmtree(tmp, ignore_errors=True)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
  out = np.zeros((size, size) + a.shape[2:], a.dtype)
  h, w = min(a.shape[0], size), min(a.shape[1], size)
  y0, x0 = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
  oy, ox = (size - h) // 2, (size - w) // 2
  out[oy:oy + h, ox:ox + w] = a[y0:y0 + h, x0:x0 + w]
  return out


def build_mni152(root: str) -> str:
  """Writes the embedded MNI152 white-matter dataset in kaggle_3m layout (once)."""
  if os.path.isdir(root):
    return root
  import nibabel as nib
  import nilearn.datasets

  src = os.path.join(os.path.dirname(nilearn.datasets.__file__), "data")
  t1 = np.asarray(nib.load(os.path.join(src, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
  wm = np.asarray(nib.load(os.path.join(src, "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
  tmp = _partial(root)
  os.makedirs(tmp, exist_ok=True)
  for axis, name in enumerate(("SAG", "COR", "AX")):
    t1a, wma = np.moveaxis(t1, axis, 0), np.moveaxis(wm, axis, 0)
    # Slices with some brain in them; the ones without white matter stay as negatives.
    brain = np.flatnonzero((t1a > 40).mean(axis=(1, 2)) > 0.05)
    idx = np.arange(max(brain.min(), 1), min(brain.max(), t1a.shape[0] - 2) + 1, _MNI_STEP)
    for slab, part in enumerate(np.array_split(idx, _MNI_SLABS)):
      case_id = f"MNI152_{name}_{slab + 1}_20090101"
      folder = os.path.join(tmp, case_id)
      os.makedirs(folder, exist_ok=True)
      for n, z in enumerate(part, start=1):
        # Rotate so that anterior/superior point up, as a radiologist would view the slice.
        image = np.rot90(np.stack([t1a[z - 1], t1a[z], t1a[z + 1]], axis=-1))
        mask = np.rot90(wma[z] > 127).astype(np.uint8) * 255
        _write_slice(folder, case_id, n, _pad_to(image, SIZE), _pad_to(mask, SIZE))
  _finish(root, tmp)
  return root


def write_synthetic(root: str, patients: int = 6, slices: int = 8, size: int = 64,
                    seed: int = 0, channels: int = 3) -> str:
  """Writes `patients` synthetic patients in kaggle_3m layout: tumour-like blobs on ellipses.

  The blob is brighter in the second channel (as a lesion is in FLAIR), so a small UNet learns
  it in a few hundred steps; about a third of the slices have no blob (negatives, as in LGG).
  """
  rng = np.random.default_rng(seed)
  tmp = _partial(root)
  yy, xx = np.mgrid[0:size, 0:size] / size
  for p in range(patients):
    case_id = f"SYN_{p:02d}_{seed:04d}0101"
    folder = os.path.join(tmp, case_id)
    os.makedirs(folder, exist_ok=True)
    for n in range(1, slices + 1):
      head = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
      image = rng.normal(20, 6, (size, size, channels)) + head[..., None] * 90
      mask = np.zeros((size, size), np.uint8)
      if rng.random() < 0.67:
        cy, cx = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.06, 0.16)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        image[blob] += np.array([30, 110, 50][:channels] + [40] * max(0, channels - 3))
        mask[blob] = 255
      _write_slice(folder, case_id, n, np.clip(image, 0, 255).astype(np.uint8), mask)
  _finish(root, tmp)
  return root


def resolve_root(spec: str, workdir: str, source: str = "lgg") -> str:
  """Turns `data.root` into a folder: builtin:mni152, synthetic:N[:SIZE[:SLICES]] (in the
  format of `source`: lgg, gi or decathlon), or a path."""
  if spec == "builtin:mni152":
    return build_mni152(os.path.join(data_dir(), "mni152_kaggle3m"))
  if spec.startswith("synthetic:"):
    from jaxseg.data import synthetic
    # synthetic:CASES[:SIZE[:SLICES]]
    default_slices = 32 if source == "decathlon" else 8
    cases, size, slices = ([int(v) for v in spec.split(":")[1:]] + [64, default_slices])[:3]
    root = os.path.join(workdir or data_dir(), f"synthetic_{source}_{cases}_{size}_{slices}")
    if os.path.isdir(root):
      return root
    if source == "lgg":
      return write_synthetic(root, patients=cases, slices=slices, size=size)
    writers = {"gi": synthetic.write_gi, "decathlon": synthetic.write_decathlon}
    if source not in writers:
      raise ValueError(f"data.root=synthetic:... has no writer for data.source={source!r}")
    tmp = _partial(root)
    writers[source](tmp, cases, size, slices)
    _finish(root, tmp)
    return root
  return spec
