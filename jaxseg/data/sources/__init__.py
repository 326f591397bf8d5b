"""One reader per on-disk format. Every source offers len / getitem / subset / case_ids /
case_strata / sample_weights; the helper below is the one weighting rule they share."""

import collections

import numpy as np


def inverse_frequency(keys) -> np.ndarray:
  """1 / (number of samples with the same key), per sample: each key gets equal total weight."""
  keys = list(keys)
  counts = collections.Counter(keys)
  return np.array([1.0 / counts[k] for k in keys])
