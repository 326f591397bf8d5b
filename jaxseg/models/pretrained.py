"""ImageNet weights from files users already have: torchvision state dicts -> Flax encoders.

Nothing is downloaded. `.safetensors` files load with numpy alone; `.pth` files need torch
(loaded with `weights_only=True`, so no code in the file runs). The encoders in `encoders.py`
carry torchvision's module names, so the conversion is a rename plus two layout rules:
conv kernels OIHW -> HWIO, BatchNorm weight/bias/running stats -> scale/bias/mean/var. Every
missing, unexpected or mis-shaped tensor is reported by name, all at once.
"""

import os

import numpy as np
from flax import traverse_util

from jaxseg.errors import DataError

# torchvision keys that are not part of an encoder (classifier heads, counters).
_IGNORED_PREFIXES = ("fc.", "classifier.", "avgpool.")
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def load_state_dict(path: str) -> dict:
  """{key: numpy array} from a .safetensors or .pth/.pt file."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such weights file")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  try:
    import torch
  except ImportError as e:
    raise DataError(f"{path}: reading .pth files needs torch (pip install torch), or convert "
                    "the file to .safetensors") from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state:  # Lightning-style wrappers
    state = state["state_dict"]
  return {k: v.detach().float().numpy() for k, v in state.items()}


def _flax_key(torch_key: str, ndim: int) -> tuple[str, tuple[str, ...]]:
  """'layer1.0.bn1.running_var' -> ('batch_stats', ('layer1_0', 'bn1', 'var'))."""
  *modules, leaf = torch_key.split(".")
  path = []
  for m in modules:  # a numeric token belongs to the module before it: features.3 -> features_3
    if m.isdigit() and path:
      path[-1] = f"{path[-1]}_{m}"
    else:
      path.append(m)
  if leaf == "running_mean":
    return "batch_stats", (*path, "mean")
  if leaf == "running_var":
    return "batch_stats", (*path, "var")
  if leaf == "weight":
    return "params", (*path, "kernel" if ndim == 4 else "scale")
  return "params", (*path, leaf)


def convert(state_dict: dict, variables: dict, source: str = "weights",
            ignored: tuple[str, ...] = ()) -> dict:
  """Returns `variables` ({'params', 'batch_stats'} of one encoder) with every tensor replaced by
  its converted counterpart from `state_dict`; raises DataError listing every mismatch. Keys
  starting with one of `ignored` (layers the encoder leaves out) are skipped."""
  flat = {col: traverse_util.flatten_dict(variables.get(col, {})) for col in ("params", "batch_stats")}
  seen, unexpected, misshaped = set(), [], []
  out = {col: dict(v) for col, v in flat.items()}
  for key, value in state_dict.items():
    if key.startswith(_IGNORED_PREFIXES + tuple(ignored)) or key.endswith(_IGNORED_SUFFIXES):
      continue
    value = np.asarray(value, np.float32)
    col, path = _flax_key(key, value.ndim)
    if path not in flat[col]:
      unexpected.append(key)
      continue
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise: (C,1,k,k) -> (k,k,1,C))
    want = tuple(flat[col][path].shape)
    if value.shape != want:
      misshaped.append(f"{key}: {value.shape} but the encoder needs {want}")
      seen.add((col, path))  # reported as mis-shaped, not again as missing
      continue
    out[col][path] = value.astype(flat[col][path].dtype)
    seen.add((col, path))
  missing = ["/".join(p) + f" ({c})" for c in flat for p in flat[c] if (c, p) not in seen]
  problems = ([f"missing: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"] if missing else []) + \
             ([f"unexpected: {', '.join(unexpected[:10])}"] if unexpected else []) + \
             ([f"mis-shaped: {'; '.join(misshaped[:10])}"] if misshaped else [])
  if problems:
    raise DataError(f"{source}: does not fit the encoder ({len(missing)} missing, "
                    f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped): "
                    + " | ".join(problems))
  return {col: traverse_util.unflatten_dict(v) for col, v in out.items() if v}


def load_encoder(path: str, params: dict, batch_stats: dict,
                 ignored: tuple[str, ...] = ()) -> tuple[dict, dict]:
  """(params, batch_stats) of a whole model with its 'encoder' subtree loaded from `path`."""
  enc = {"params": params["encoder"]}
  if "encoder" in batch_stats:
    enc["batch_stats"] = batch_stats["encoder"]
  new = convert(load_state_dict(path), enc, source=path, ignored=ignored)
  params = {**params, "encoder": new["params"]}
  if "batch_stats" in new:
    batch_stats = {**batch_stats, "encoder": new["batch_stats"]}
  return params, batch_stats
