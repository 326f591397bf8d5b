"""Host-side sample transforms, as Grain map / random-map transforms.

Samples are dicts of numpy arrays, channels last: image [H, W, C] (float32 after Preprocess,
or uint8 where its z-score is left to the device), mask uint8 [H, W, K] (0/1 channels, or class
labels in one channel). Geometric transforms move image and mask together; intensity
transforms leave masks alone. Random transforms draw from the numpy Generator Grain passes in, which Grain seeds per
record and epoch, so results do not depend on the number of worker processes.
"""

import dataclasses

import grain
import numpy as np
from PIL import Image

from jaxseg.data import geometry
from jaxseg.errors import DataError


def resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
  """Resizes [H, W, C] to [size[0], size[1], C]; bilinear for images (float32 out), nearest for
  masks (their dtype kept)."""
  if array.shape[:2] == tuple(size):
    return array
  resample = Image.NEAREST if nearest else Image.BILINEAR
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(array[..., c], np.float32), mode="F")
                 .resize((size[1], size[0]), resample))
      for c in range(array.shape[-1])
  ]
  out = np.stack(channels, axis=-1)
  return out.astype(array.dtype) if nearest else out


def normalize(image: np.ndarray) -> np.ndarray:
  """Per-image, per-channel zero mean and unit variance (constant channels become zero)."""
  # Channel-major copy first: numpy reduces a (pixels, 3) array across its short rows ~10x
  # slower (2.7 vs 0.28 ms for a 256x256 RGB slice, the largest host cost of the LGG loader).
  channels = image.shape[-1]
  by_channel = np.ascontiguousarray(image.reshape(-1, channels).T, np.float32)
  centred = by_channel - by_channel.mean(axis=1, keepdims=True)
  std = np.sqrt(np.einsum("ij,ij->i", centred, centred) / centred.shape[1])
  centred *= (1 / np.maximum(std, 1e-6))[:, None]
  return np.ascontiguousarray(centred.T).reshape(image.shape)


def normalize_device(images, eps: float = 1e-6):
  """`normalize`'s twin in jax for a batch [B, *spatial, C] of any dtype -> float32: each
  example's channels over all its spatial axes."""
  import jax.numpy as jnp
  x = images.astype(jnp.float32)
  axes = tuple(range(1, x.ndim - 1))
  centred = x - x.mean(axis=axes, keepdims=True)
  std = jnp.sqrt(jnp.mean(centred * centred, axis=axes, keepdims=True))
  # A constant channel's float32 mean can be off by an ulp (numpy's pairwise sum is not), which
  # divided by eps is no longer ~0: make it exactly the host's zeros (centred * 0 keeps a NaN
  # image NaN, so train.nan_policy still sees it).
  return jnp.where(std > eps, centred / jnp.maximum(std, eps), centred * 0)


@dataclasses.dataclass(frozen=True)
class Preprocess(grain.transforms.Map):
  """Any image -> float32; 2-D images resized to `size` (0 keeps the native size; volumes keep
  the shape their source gives them); `normalize`: 'zscore' per image and channel, or 'none'
  (for sources that normalise themselves, such as Decathlon's brain-voxel z-score).

  With `zscore_on_device` the z-score is left to the jitted step (`normalize_device`) and a
  uint8 image nothing else here touches stays uint8, as does CLAHE's 8-bit output: an LGG or GI
  batch is then a quarter of its float32 bytes to copy through Grain's shared memory and onto
  the devices. Masks keep the source's uint8 either way; the steps cast both on the device.
  `batch_dtype` ("uint8" or "float32", the training stream's: its compiled step takes one) makes
  every image that dtype, and a non-uint8 image in a uint8 stream an error naming the sample."""

  size: int = 0
  normalize: str = "zscore"
  clahe_clip: float = 0.0  # > 0: CLAHE with this clip limit on every image, train and test
  clahe_tiles: int = 8
  zscore_on_device: bool = False
  batch_dtype: str = ""

  @classmethod
  def from_config(cls, data_cfg, zscore_on_device: bool = False,
                  batch_dtype: str = "") -> "Preprocess":
    return cls(data_cfg.image_size, data_cfg.normalize, data_cfg.clahe_clip,
               data_cfg.clahe_tiles, zscore_on_device, batch_dtype)

  def map(self, sample: dict) -> dict:
    if self.normalize not in ("zscore", "none"):
      raise ValueError(f"data.normalize={self.normalize!r}; known: zscore, none")
    image, mask = sample["image"], sample["mask"]
    resized = bool(self.size) and image.ndim == 3 and image.shape[:2] != (self.size,) * 2
    if not (self.zscore_on_device and image.dtype == np.uint8 and not resized
            and self.clahe_clip <= 0):
      image = image.astype(np.float32)
    if resized:
      image = resize(image, (self.size, self.size), nearest=False)
      mask = resize(mask, (self.size, self.size), nearest=True)
    if self.clahe_clip > 0:
      # Its 8 bits as they are where the device z-scores them (the scale does not matter there).
      image = clahe(image, self.clahe_clip, self.clahe_tiles,
                    as_uint8=self.zscore_on_device and self.normalize == "zscore")
    if self.normalize == "zscore" and not self.zscore_on_device:
      image = normalize(image)
    if self.batch_dtype and image.dtype != self.batch_dtype:
      if self.batch_dtype != "float32":
        raise DataError(
            f"case {sample.get('case_id')}, slice {sample.get('slice')}: a "
            f"{sample['image'].dtype} image in "
            f"a dataset whose first image is {self.batch_dtype} (its training batches are "
            f"{self.batch_dtype}); store every image with one dtype")
      image = image.astype(np.float32)
    return {**sample, "image": image, "mask": mask}


def clahe(image: np.ndarray, clip: float, tiles: int, as_uint8: bool = False) -> np.ndarray:
  """Contrast-limited adaptive histogram equalisation per channel (and per slice of a volume),
  by OpenCV as albumentations' CLAHE does: each channel is min-max scaled to 8 bits first, as
  the GI-tract pipeline fed albumentations; the output is in [0, 1] (float32), or OpenCV's
  0-255 itself with `as_uint8`. OpenCV rather than our own: its tiled histograms with bilinear
  blending take ~0.3 ms per 224x224 8-bit slice."""
  import cv2
  op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(tiles, tiles))
  flat = image.reshape((-1,) + image.shape[-3:]) if image.ndim == 4 else image[None]
  out = np.empty(flat.shape, np.uint8)
  for d in range(flat.shape[0]):
    for c in range(flat.shape[-1]):
      ch = flat[d, ..., c]
      lo, hi = float(ch.min()), float(ch.max())
      u8 = np.round((ch - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
      out[d, ..., c] = op.apply(u8)
  out = out.reshape(image.shape)
  return out if as_uint8 else out.astype(np.float32) / 255


@dataclasses.dataclass(frozen=True)
class RandomPatch(grain.transforms.RandomMap):
  """A `size` patch (the leading spatial axes: (D, H, W) of a volume or (H, W) of an image) at a
  random position; with probability `foreground`, centred on a random labelled voxel (nnU-Net
  oversamples foreground a third of the time, so rare tumour classes are seen). Samples smaller
  than the patch are zero-padded."""

  size: tuple = ()
  foreground: float = 0.33

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    image, mask = sample["image"], sample["mask"]
    nd = len(self.size)
    pad = [(0, max(0, p - s)) for s, p in zip(image.shape[:nd], self.size, strict=True)]
    if any(after for _, after in pad):
      extra = [(0, 0)] * (image.ndim - nd)
      image, mask = np.pad(image, pad + extra), np.pad(mask, pad + extra)
    shape = image.shape[:nd]
    labelled = np.argwhere(mask.max(-1) > 0) if rng.random() < self.foreground else []
    if len(labelled):
      centre = labelled[rng.integers(len(labelled))]
      start = [int(np.clip(c - p // 2, 0, s - p))
               for c, p, s in zip(centre, self.size, shape, strict=True)]
    else:
      start = [int(rng.integers(0, s - p + 1)) for p, s in zip(self.size, shape, strict=True)]
    region = tuple(slice(a, a + p) for a, p in zip(start, self.size, strict=True))
    return {**sample, "image": np.ascontiguousarray(image[region]),
            "mask": np.ascontiguousarray(mask[region])}


@dataclasses.dataclass(frozen=True)
class FlipRot90(grain.transforms.RandomMap):
  """Horizontal flip, vertical flip and a random multiple of 90 degrees in the (H, W) plane,
  each with its p; works on [H, W, C] images and [D, H, W, C] volumes alike."""

  hflip: float = 0.5
  vflip: float = 0.5
  rot90: float = 0.5

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    image, mask = sample["image"], sample["mask"]
    u = rng.random(3)
    k = int(rng.integers(1, 4))
    if u[0] < self.hflip:
      image, mask = np.flip(image, -2), np.flip(mask, -2)
    if u[1] < self.vflip:
      image, mask = np.flip(image, -3), np.flip(mask, -3)
    if u[2] < self.rot90:
      image, mask = np.rot90(image, k, axes=(-3, -2)), np.rot90(mask, k, axes=(-3, -2))
    return {**sample, "image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask)}


@dataclasses.dataclass(frozen=True)
class ShiftScaleRotate(grain.transforms.RandomMap):
  """With probability p: shift by up to `shift` of the size, scale by 1 +- `scale`, rotate by up
  to +-`rotate` degrees about the centre; zeros outside. Image bilinear, mask nearest. The same
  warp runs on the device where data.augment.on_device resolves to it (jaxseg.data.geometry)."""

  p: float = 0.5
  shift: float = 0.0625
  scale: float = 0.1
  rotate: float = 20.0

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    u = rng.random(5)
    if u[4] >= self.p:
      return sample
    h, w = sample["image"].shape[-3:-1]
    m, offset = geometry.ssr_params(u[:4], h, w, self.shift, self.scale, self.rotate)
    return {**sample, "image": geometry.warp_host(sample["image"], m, offset, nearest=False),
            "mask": geometry.warp_host(sample["mask"], m, offset, nearest=True)}


def _warp(sample: dict, src: np.ndarray) -> dict:
  return {**sample, "image": geometry.warp_field_host(sample["image"], src, nearest=False),
          "mask": geometry.warp_field_host(sample["mask"], src, nearest=True)}


@dataclasses.dataclass(frozen=True)
class Elastic(grain.transforms.RandomMap):
  """Elastic deformation: normal displacements scaled to `alpha` pixels on a `control` x
  `control` grid, interpolated to every pixel (jaxseg.data.geometry, shared with the device)."""

  alpha: float = 8.0
  control: int = 5

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    from scipy import ndimage
    h, w = sample["image"].shape[-3:-1]
    noise = rng.normal(size=(2, self.control, self.control)).astype(np.float32)
    return _warp(sample, geometry.elastic_field(noise, h, w, self.alpha, ndimage.map_coordinates))


@dataclasses.dataclass(frozen=True)
class GridDistortion(grain.transforms.RandomMap):
  """`cells` x `cells` grid whose cells stretch by up to +-`limit` along each axis."""

  cells: int = 5
  limit: float = 0.3

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    h, w = sample["image"].shape[-3:-1]
    steps = rng.uniform(-self.limit, self.limit, (2, self.cells)).astype(np.float32)
    return _warp(sample, geometry.grid_distortion_field(steps, h, w))


# Intensity transforms: they change the image only. Each function takes (image, rng) and has a
# Grain transform below; they run after normalisation, so strengths are in units of the image's
# standard deviation.
def gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
  return (image + rng.normal(0.0, std, image.shape)).astype(np.float32)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
  """Blur in the spatial plane (not across channels) with sigma drawn from [sigma/4, sigma]."""
  from scipy import ndimage
  s = rng.uniform(sigma / 4, sigma)
  sigmas = [0.0] * (image.ndim - 3) + [s, s, 0.0]
  return ndimage.gaussian_filter(image, sigmas, mode="nearest").astype(np.float32)


def gaussian_blur_device(image, sigma, sigma_max: float):
  """The host blur's twin in jax for one [H, W, C] image with a traced `sigma`: scipy's
  gaussian_filter1d kernel (radius int(4 sigma + 0.5), edge-replicating border) along H, then
  W, built on a fixed window for `sigma_max` so the shapes do not depend on sigma."""
  import jax.numpy as jnp
  r_max = int(4 * sigma_max + 0.5)
  x = jnp.arange(-r_max, r_max + 1, dtype=jnp.float32)
  radius = jnp.floor(4 * sigma + 0.5)
  w = jnp.where(jnp.abs(x) <= radius, jnp.exp(-0.5 * (x / sigma) ** 2), 0.0)
  w = w / w.sum()
  out = image
  for axis in (0, 1):
    pad = [(0, 0)] * image.ndim
    pad[axis] = (r_max, r_max)
    padded = jnp.pad(out, pad, mode="edge")
    n = out.shape[axis]
    out = sum(w[k] * jnp.take(padded, jnp.arange(k, k + n), axis=axis)
              for k in range(2 * r_max + 1))
  return out


def gamma(image: np.ndarray, rng: np.random.Generator, limit: float) -> np.ndarray:
  """x -> x ** g on the image min-max scaled to [0, 1] and back (images here are z-scored, so
  a plain power is undefined), g drawn log-uniformly from [1 / (1 + limit), 1 + limit]."""
  g = float(np.exp(rng.uniform(-np.log1p(limit), np.log1p(limit))))
  lo, hi = float(image.min()), float(image.max())
  unit = (image - lo) / max(hi - lo, 1e-12)
  return (lo + (hi - lo) * unit**g).astype(np.float32)


def brightness_contrast(image: np.ndarray, rng: np.random.Generator, brightness: float,
                        contrast: float) -> np.ndarray:
  b, c = rng.uniform(-brightness, brightness), rng.uniform(-contrast, contrast)
  return (image * (1 + c) + b).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class GaussianNoise(grain.transforms.RandomMap):
  std: float = 0.1

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "image": gaussian_noise(sample["image"], rng, self.std)}


@dataclasses.dataclass(frozen=True)
class GaussianBlur(grain.transforms.RandomMap):
  sigma: float = 1.0

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "image": gaussian_blur(sample["image"], rng, self.sigma)}


@dataclasses.dataclass(frozen=True)
class BrightnessContrast(grain.transforms.RandomMap):
  brightness: float = 0.2
  contrast: float = 0.2

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "image": brightness_contrast(sample["image"], rng, self.brightness,
                                                   self.contrast)}


@dataclasses.dataclass(frozen=True)
class Gamma(grain.transforms.RandomMap):
  limit: float = 0.2

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    return {**sample, "image": gamma(sample["image"], rng, self.limit)}


# Combinators, as in albumentations: a recipe is a Compose of transforms, OneOfs and maybes.
@dataclasses.dataclass(frozen=True)
class OneOf(grain.transforms.RandomMap):
  """With probability `p`, one of `options` (random maps), chosen uniformly; a single option
  is "apply with probability p"."""

  options: tuple = ()
  p: float = 1.0

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    u = rng.random(2)
    if u[0] >= self.p or not self.options:
      return sample
    pick = self.options[min(int(u[1] * len(self.options)), len(self.options) - 1)]
    return pick.random_map(sample, rng)


@dataclasses.dataclass(frozen=True)
class Compose(grain.transforms.RandomMap):
  """The transforms in order, each drawing from the same per-record generator."""

  transforms: tuple = ()

  def random_map(self, sample: dict, rng: np.random.Generator) -> dict:
    for t in self.transforms:
      sample = t.random_map(sample, rng)
    return sample


def train_recipe(aug, on_device: bool = False) -> Compose:
  """data.augment as a Compose: flips / 90° turns, shift-scale-rotate, one of {elastic, grid},
  one of {noise, blur}, brightness / contrast, gamma; each with its probability. With
  `on_device` (data.augment.on_device resolved), the warps and noise / blur run in the jitted
  step instead (train/step.py)."""
  steps = [FlipRot90(aug.hflip, aug.vflip, aug.rot90)]
  if not on_device:
    if aug.ssr:
      steps.append(ShiftScaleRotate(aug.ssr, aug.ssr_shift, aug.ssr_scale, aug.ssr_rotate))
    if aug.elastic_or_grid:
      steps.append(OneOf((Elastic(aug.elastic_alpha, aug.elastic_control),
                          GridDistortion(aug.grid_cells, aug.grid_limit)), aug.elastic_or_grid))
    if aug.noise_or_blur:
      steps.append(OneOf((GaussianNoise(aug.noise_std), GaussianBlur(aug.blur_sigma)),
                         aug.noise_or_blur))
  if aug.brightness_contrast:
    steps.append(OneOf((BrightnessContrast(aug.brightness, aug.contrast),),
                       aug.brightness_contrast))
  if aug.gamma:
    steps.append(OneOf((Gamma(aug.gamma_limit),), aug.gamma))
  return Compose(tuple(steps))
