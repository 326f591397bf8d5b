"""torchvision checkpoints -> Flax encoders: features equal torch's (float32, rel. error < 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402
from torch_reference import VGG16, EfficientNetB3, ResNet50, randomize_batch_norm  # noqa: E402

from jaxseg.config import default_config  # noqa: E402
from jaxseg.errors import DataError  # noqa: E402
from jaxseg.models import pretrained  # noqa: E402
from jaxseg.models.encoders import ENCODERS  # noqa: E402

SIZE = 64


def _export(model, tmp_path, fmt):
  path = tmp_path / f"w.{fmt}"
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  if fmt == "pth":
    torch.save(state, path)
  else:
    save_file(state, str(path))
  return str(path)


@pytest.mark.parametrize("name,torch_cls,fmt", [("vgg16", VGG16, "safetensors"),
                                                ("resnet50", ResNet50, "pth"),
                                                ("efficientnet_b3", EfficientNetB3, "pth")])
def test_imported_encoder_features_equal_torch(name, torch_cls, fmt, tmp_path):
  torch.manual_seed(0)
  ref = randomize_batch_norm(torch_cls()).eval()
  x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    want = [f.permute(0, 2, 3, 1).numpy() for f in ref(torch.from_numpy(x).permute(0, 3, 1, 2))]

  enc = ENCODERS[name]()
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  variables = pretrained.convert(pretrained.load_state_dict(_export(ref, tmp_path, fmt)), zeros,
                                 ignored=ENCODERS[name].IGNORED)
  got = jax.jit(lambda v, x: enc.apply(v, x, train=False))(variables, x)
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert g.shape == w.shape
    rel = np.linalg.norm(np.asarray(g) - w) / np.linalg.norm(w)
    assert rel < 1e-4, (name, g.shape, rel)


def test_mismatched_weights_name_every_problem(tmp_path):
  ref = VGG16()
  state = ref.state_dict()
  del state["features.0.bias"]
  state["features.2.weight"] = torch.zeros(64, 64, 5, 5)
  state["extra.layer.weight"] = torch.zeros(3)
  path = tmp_path / "bad.safetensors"
  save_file({k: v.contiguous() for k, v in state.items()}, str(path))
  enc = ENCODERS["vgg16"]()
  shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  with pytest.raises(DataError) as e:
    pretrained.convert(pretrained.load_state_dict(str(path)), shapes, source=str(path))
  msg = str(e.value)
  assert "bad.safetensors" in msg and "1 missing" in msg and "1 unexpected" in msg
  assert "features_0/bias" in msg and "extra.layer.weight" in msg
  assert "features.2.weight: (5, 5, 64, 64) but the encoder needs (3, 3, 64, 64)" in msg


def test_model_pretrained_loads_the_encoder_at_init(tmp_path):
  from jaxseg.train.experiment import Experiment
  ref = randomize_batch_norm(ResNet50())
  c = default_config()
  c.data.image_size, c.data.batch_size = 64, 2
  c.model.name, c.model.features = "unet_resnet50", 4
  c.model.pretrained = _export(ref, tmp_path, "pth")
  state, _, origin = Experiment(c, "").restore_or_init()
  assert "encoder weights" in origin
  got = np.asarray(state.params["encoder"]["layer3_2"]["conv2"]["kernel"])
  np.testing.assert_array_equal(got, ref.layer3[2].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(state.batch_stats["encoder"]["bn1"]["var"]),
                                ref.bn1.running_var.numpy())
