"""From config to batches: source -> split -> Grain transforms -> numpy batches -> devices.

Every host builds the same globally shuffled index order and takes every `process_count`-th
record of it, so the hosts together read one global batch per step without coordination, and
the iterator state (how many batches were consumed) is the same number on every host.
"""

import atexit
import functools
import gc
import mmap
import queue
import sys
import threading
import time

import grain
import jax
import numpy as np
from absl import flags

from jaxseg.data import builtin, sample_cache, splits
from jaxseg.data.sources.decathlon import DecathlonSource
from jaxseg.data.sources.folder import FolderSource
from jaxseg.data.sources.gi import GISource
from jaxseg.data.sources.lgg import LGGSource
from jaxseg.data.transforms import Preprocess, RandomPatch, train_recipe

SOURCES = {"lgg": LGGSource, "gi": GISource, "decathlon": DecathlonSource,
           "folder": FolderSource}
# Keys that stay on the host (strings, ids); everything else in a batch goes to the devices.
HOST_KEYS = ("case_id", "slice")


def augment_on_device(aug) -> bool:
  """data.augment.on_device resolved (see jaxseg/config.py): auto is the device off CPUs."""
  if aug.on_device == "auto":
    return jax.default_backend() != "cpu"
  if aug.on_device not in ("device", "host"):
    raise ValueError(f"data.augment.on_device={aug.on_device!r}; known: auto, device, host")
  return aug.on_device == "device"


def _warps_or_noise(aug) -> bool:
  """Whether data.augment asks for any of the transforms on_device moves: warps, noise, blur."""
  return bool(aug.ssr or aug.elastic_or_grid or aug.noise_or_blur)


def device_augment_config(aug):
  """The data.augment config for the jitted step when it runs warps, noise or blur there, else
  None (the step then skips device_augment)."""
  return aug if _warps_or_noise(aug) and augment_on_device(aug) else None


def zscore_on_device(data_cfg) -> bool:
  """Whether the per-image z-score runs in the jitted steps instead of the loader: where the
  host transforms after it (flips and 90-degree turns) only move pixels, so the statistics, and
  the result, are the same. Warps with zero fill, patches and intensity transforms on the host
  keep it there. Shipping the images un-normalised lets them stay uint8 through the loader (LGG's
  8-bit slices, and CLAHE's 8-bit output for the GI set)."""
  aug = data_cfg.augment
  host_warps_or_noise = _warps_or_noise(aug) and not augment_on_device(aug)
  return (data_cfg.normalize == "zscore" and not data_cfg.patch and not host_warps_or_noise
          and not aug.brightness_contrast and not aug.gamma)


def image_dtype(source, data_cfg) -> np.dtype:
  """The dtype of the training batches' images (the compiled step is built for it): float32, or
  uint8 for a uint8 (or CLAHE'd) source whose z-score runs on the device. Reads one sample."""
  if not zscore_on_device(data_cfg) or len(source) == 0:
    return np.dtype(np.float32)
  return preprocessed(source, data_cfg)[0]["image"].dtype


def build_source(data_cfg, workdir: str):
  if data_cfg.source not in SOURCES:
    raise ValueError(f"data.source={data_cfg.source!r}; known: {sorted(SOURCES)}")
  root = builtin.resolve_root(data_cfg.root, workdir, data_cfg.source)
  return SOURCES[data_cfg.source].from_config(root, data_cfg, workdir=workdir)


def split_sources(source, data_cfg, workdir: str) -> dict:
  """Returns {'train': src, 'val': src, 'test': src} over disjoint patient sets."""
  split = splits.load_or_make_split(workdir, source.case_ids(), data_cfg.split, source.case_strata)
  return {name: source.subset(ids) for name, ids in split.items()}


def local_batch_size(global_batch: int) -> int:
  n_dev, n_proc = jax.device_count(), jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f"batch size {global_batch} does not divide over {n_dev} devices")
  return global_batch // n_proc


def buffered_batches(data_cfg) -> int:
  """Batches the training stream can hold ready ahead of its reader: each worker's read-ahead
  plus the one it hands over."""
  return max(data_cfg.num_workers, 1) * (_read_ahead(data_cfg) + (data_cfg.num_workers > 0))


def _read_ahead(data_cfg) -> int:
  return data_cfg.prefetch_buffer * 4


@functools.cache
def _release_shared_memory_at_exit() -> None:
  atexit.register(_release_shared_memory)


def _release_shared_memory() -> None:
  """Grain's workers hand batches over in shared memory that the arrays' finalisers unlink, some
  on a thread of Grain's. At exit, collect the last arrays (some sit in reference cycles) and
  wait for that thread: left to Python's resource tracker, runs with workers ended on a
  warning of "leaked shared_memory objects". Arrays still referenced then (by a daemon thread,
  say) have their segments' names unlinked now; their mappings stay valid until they go."""
  gc.collect()
  try:
    from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
  except ImportError:  # a Grain without it: nothing to wait for
    return
  pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
  if pool is not None:
    # Grain starts it with one thread, so tasks run in order: this returns after the deletions
    # queued before it.
    pool.apply(lambda: None)
  for array in gc.get_objects():
    # type(), not isinstance: that reads __class__, which some lazy proxies (torch's deprecated
    # names) answer with a warning.
    if (type(array) is SharedMemoryArray and getattr(array, "_unlink_on_del", False)
        and isinstance(array.base, mmap.mmap)):
      array._unlink_on_del = False  # its finaliser, later, only closes the mapping
      try:
        array.shm.unlink()
      except FileNotFoundError:  # unlinked already
        pass


def _to_iter(ds: grain.MapDataset, data_cfg) -> grain.IterDataset:
  # Grain runs this read-ahead inside each worker process, so its threads are per process: two
  # each (it was twice the worker count, so 12 workers ran 24 threads each on a 16-core host).
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                            prefetch_buffer_size=_read_ahead(data_cfg)))
  if data_cfg.num_workers > 0:
    # Grain's workers read absl flags; outside an absl app (tests, notebooks) nothing parsed
    # them, so take the defaults rather than fail.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    _release_shared_memory_at_exit()
  return it


class WeightedIndices:
  """An endless sequence of record indices drawn with replacement with probability ∝ weight,
  `len(weights)` draws per epoch, each epoch from its own seeded generator: deterministic for a
  given (seed, position), so hosts can slice it and a resumed iterator sees the same draws."""

  def __init__(self, weights, seed: int):
    weights = np.asarray(weights, np.float64)
    self.p = weights / weights.sum()
    self.seed = seed

  def __len__(self):
    return sys.maxsize

  def __getitem__(self, i: int) -> int:
    epoch, j = divmod(i, len(self.p))
    return int(self._epoch(epoch)[j])

  @functools.lru_cache(maxsize=2)  # noqa: B019 -- one or two epochs live at a time
  def _epoch(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    return rng.choice(len(self.p), size=len(self.p), p=self.p)


class _Lookup(grain.transforms.Map):
  def __init__(self, source):
    self.source = source

  def map(self, index: int) -> dict:
    return self.source[index]


def _train_records(samples, data_cfg, seed: int) -> grain.MapDataset:
  """The endless record stream before this host's slice: reshuffled every epoch, or with
  data.sampler='balanced' drawn with weight 1 / (count of the record's class combination).
  Grain datasets are lazy, so slicing this stream afterwards reads only this host's records."""
  if data_cfg.sampler == "uniform":
    return grain.MapDataset.source(samples).seed(seed).shuffle().repeat()
  if data_cfg.sampler == "balanced":
    indices = WeightedIndices(samples.source.sample_weights(), seed)
    return grain.MapDataset.source(indices).seed(seed).map(_Lookup(samples))
  raise ValueError(f"data.sampler={data_cfg.sampler!r}; known: uniform, balanced")


def preprocessed(source, data_cfg, batch_dtype: str = ""):
  """`source`'s samples through transforms.Preprocess, cached on disk with data.sample_cache."""
  preprocess = Preprocess.from_config(data_cfg, zscore_on_device(data_cfg), batch_dtype)
  return sample_cache.PreprocessedSource(source, preprocess,
                                         sample_cache.resolve_folder(data_cfg.sample_cache))


def train_dataset(source, data_cfg, seed: int) -> grain.IterDataset:
  """An endless, augmented stream of this host's training batches."""
  samples = preprocessed(source, data_cfg, str(image_dtype(source, data_cfg)))
  ds = _train_records(samples, data_cfg, seed)[jax.process_index()::jax.process_count()]
  if data_cfg.patch:
    ds = ds.random_map(RandomPatch(tuple(data_cfg.patch), data_cfg.patch_foreground))
  ds = ds.random_map(train_recipe(data_cfg.augment, augment_on_device(data_cfg.augment)))
  ds = ds.batch(local_batch_size(data_cfg.batch_size), drop_remainder=True)
  return _to_iter(ds, data_cfg)


def eval_batches(source, data_cfg):
  """This host's share of `source` in fixed-size batches; padding rows have valid == 0.

  Every batch has the same shape (so the eval step compiles once) and every host yields the
  same number of batches (so collectives line up).
  """
  n_proc, pid = jax.process_count(), jax.process_index()
  bs = local_batch_size(data_cfg.eval_batch_size)
  per_host = -(-len(source) // n_proc)
  n_batches = -(-per_host // bs)
  ds = grain.MapDataset.source(preprocessed(source, data_cfg))[pid::n_proc]
  it = iter(_to_iter(ds, data_cfg))
  for _ in range(n_batches):
    items = [x for x in (next(it, None) for _ in range(bs)) if x is not None]
    yield pad_batch(items, bs)


def pad_batch(items: list[dict], size: int) -> dict:
  """Stacks samples into a batch of exactly `size` rows, adding a `valid` 0/1 column."""
  if not items:
    raise ValueError("pad_batch needs at least one sample to know the shapes")
  batch = {k: np.stack([x[k] for x in items]) for k in items[0]}
  n = len(items)
  batch["valid"] = np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])
  for k, v in batch.items():
    if len(v) < size:
      batch[k] = np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)])
  return batch


def split_host(batch: dict) -> tuple[dict, dict]:
  """Separates the arrays for the devices from the ids that stay on the host."""
  host = {k: batch[k] for k in HOST_KEYS if k in batch}
  device = {k: v for k, v in batch.items() if k not in HOST_KEYS}
  return device, host


class DevicePrefetcher:
  """Moves batches to the devices in a background thread, `size` batches ahead.

  Grain's iterator runs ahead of the training loop here, so `state()` reports the Grain state
  that belongs to the last batch handed out, not the iterator's current one: a checkpoint then
  resumes exactly after the last batch the model saw.
  """

  def __init__(self, iterator, sharding, size: int = 2):
    self._it = iterator
    self._sharding = sharding
    self._queue = queue.Queue(maxsize=size)
    self._state = iterator.get_state()
    self._stop = threading.Event()
    # Seconds the thread spent waiting on Grain and handing batches to the devices, and batches:
    # which side of the loader is slow (jaxseg bench --what=loop reports them).
    self.timings = {"read_s": 0.0, "transfer_s": 0.0, "batches": 0}
    self._thread = threading.Thread(target=self._fill, daemon=True)
    self._thread.start()

  def _fill(self):
    try:
      while not self._stop.is_set():
        t0 = time.perf_counter()
        batch = next(self._it)
        state = self._it.get_state()
        t1 = time.perf_counter()
        device, host = split_host(batch)
        device = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self._sharding, x), device)
        self.timings["read_s"] += t1 - t0
        self.timings["transfer_s"] += time.perf_counter() - t1
        self.timings["batches"] += 1
        self._put((device, host, state))
    except BaseException as e:  # surfaced to the consumer, with the file named by the reader
      self._put(e)

  def _put(self, item):
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    device, host, self._state = item
    return device, host

  def state(self) -> dict:
    return self._state

  def close(self):
    """Stops the thread, then the Grain iterator, which ends its worker processes (left to
    garbage collection, they outlived the loop)."""
    self._stop.set()
    self._thread.join(timeout=5)
    if hasattr(self._it, "close"):
      self._it.close()
