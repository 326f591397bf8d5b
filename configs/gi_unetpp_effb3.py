"""UW-Madison GI tract (mission B): UNet++ on an ImageNet EfficientNet-B3, fine-tuned in two phases.

  jaxseg train --config=configs/gi_unetpp_effb3.py:1 --workdir=runs/gi_effb3_phase1 \
      --config.data.root=/data/uw-madison-gi-tract-image-segmentation \
      --config.model.pretrained=/weights/efficientnet_b3.pth
  jaxseg train --config=configs/gi_unetpp_effb3.py:2 --workdir=runs/gi_effb3_phase2 \
      --config.data.root=/data/uw-madison-gi-tract-image-segmentation \
      --config.init_from=runs/gi_effb3_phase1

Reference recipe (test Dice 0.8248): the GI data pipeline of `gi_cnn_scratch` (224x224, 2.5-D
slices, balanced sampler, flips, shift-scale-rotate, noise/blur), 0.4 Dice + 0.6 BCE, batch 16.
Phase 1: encoder frozen, 10 epochs, RMSprop lr 5e-5, cosine T_max 50 epochs to 1e-6.
Phase 2: from phase 1's best checkpoint (`init_from`), the encoder's last stage (stage7, ending in
its last conv) unfrozen with the decoder, 5 epochs, lr 1e-6 times 0.9 each epoch (StepLR).
`model.pretrained` takes torchvision's efficientnet_b3 state dict (.pth or .safetensors); the
1536-channel head conv and classifier are skipped. Encoder 10,103,336 parameters (10.7 M with
the skipped head conv, the reference's "about 10.6 M"), decoder 3,438,707.
"""

from configs import gi_cnn_scratch

ENCODER_STAGES = ("stem",) + tuple(f"stage{i}" for i in range(1, 8))


def get_config(phase: str = "1"):
  if phase not in ("1", "2"):
    raise ValueError(f"gi_unetpp_effb3 has phases 1 and 2, not {phase!r} (configs/x.py:PHASE)")
  c = gi_cnn_scratch.get_config()
  epoch = gi_cnn_scratch.STEPS_PER_EPOCH
  c.model.name = "unetpp_efficientnet_b3"
  c.model.features = 16  # decoder widths 256, 128, 64, 32, 16 (segmentation_models' default)
  c.model.residual = False
  c.model.dropout = 0.0
  c.optim.name = "rmsprop"
  if phase == "1":
    c.model.freeze = ",".join(ENCODER_STAGES)
    c.optim.lr = 5e-5
    c.optim.min_lr = 1e-6
    c.optim.decay_steps = 50 * epoch
    c.train.steps = 10 * epoch
  else:
    c.model.freeze = ",".join(ENCODER_STAGES[:-1])
    c.init_from = "runs/gi_effb3_phase1"
    c.optim.lr = 1e-6
    c.optim.schedule = "step"
    c.optim.step_every = epoch
    c.optim.step_gamma = 0.9
    c.train.steps = 5 * epoch
  return c
