"""The one base config: every knob jaxseg reads has its default here.

Experiment files in configs/ start from `default_config()` and change only what differs, so a
typo in an override (`--config.optim.lrr=1`) is an error rather than a silently ignored key,
and a wrong type (`--config.optim.lr=abc`) is rejected by ConfigDict's type safety.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Where to start when the workdir has no checkpoint: '' (scratch) or a checkpoint directory
  # (a workdir's checkpoints/ folder or one step folder inside it).
  c.init_from = ""

  c.data = ml_collections.ConfigDict()
  c.data.source = "lgg"  # lgg (kaggle_3m) | gi (UW-Madison) | decathlon | folder (your own)
  # folder source: regex with one group naming the patient in each file name ('' = per image)
  c.data.case_pattern = ""
  # Dataset root. 'builtin:mni152' is the embedded default dataset, 'synthetic:N' writes N
  # synthetic patients (tests, benchmarks) into the workdir.
  c.data.root = ""
  c.data.image_size = 256  # square side after resizing; 0 keeps the native size
  c.data.depth = 0  # slices per 3-D sample ([D, H, W, C] input); 0 for 2-D images
  c.data.in_channels = 3
  c.data.num_classes = 1  # output channels (binary / multi-label) or classes (multi-class)
  c.data.task = "binary"  # binary | multilabel | multiclass
  c.data.batch_size = 8  # global batch, split over all devices of all hosts
  c.data.eval_batch_size = 8
  c.data.num_workers = 0  # Grain worker processes; 0 loads in the main process
  # uniform: reshuffle every epoch; balanced: draw with weight 1 / count of the sample's class
  # combination (GI: organ combination; LGG: tumour / no tumour).
  c.data.sampler = "uniform"
  c.data.drop_unlabelled = True  # GI: skip slices with no organ labelled
  c.data.normalize = "zscore"  # zscore (per image and channel) | none (the source normalises)
  # CLAHE (OpenCV) on every image before normalisation, train and test; 0 = off. The GI
  # project: clip 2.0, 8 x 8 tiles.
  # Training on random patches of each sample: (D, H, W) or (H, W); () trains on whole samples.
  # patch_foreground: probability that a patch is centred on a labelled voxel.
  c.data.patch = ()
  c.data.patch_foreground = 0.33
  c.data.clahe_clip = 0.0
  c.data.clahe_tiles = 8
  # Decathlon / BraTS volumes: centre crop (D, H, W; empty = none), integer down-sampling,
  # modalities to keep (indices; empty = all), where preprocessed volumes are cached
  # ('' = workdir/preprocessed).
  c.data.crop = ()
  c.data.crop_to_brain = False  # Decathlon: cut to the non-zero (brain) bounding box first
  c.data.downsample = 1
  c.data.modalities = ()
  c.data.cache_dir = ""
  # Each 2-D sample after its deterministic preprocessing (read, resize, CLAHE, z-score) kept
  # as .npz (jaxseg.data.sample_cache): '' off, 'auto' ($JAXSEG_DATA_DIR or ~/.cache/jaxseg,
  # then samples/), or a folder. Keyed by the files and settings, so one folder serves many runs.
  c.data.sample_cache = ""
  c.data.prefetch_buffer = 2

  c.data.split = ml_collections.ConfigDict()
  c.data.split.val = 0.1  # fraction of patients
  c.data.split.test = 0.1
  c.data.split.stratify = True  # stratify patients by whether they have any foreground
  c.data.split.seed = 0
  # K-fold cross-validation (folds > 1): fold `fold` is the validation set, `val` is unused;
  # run every fold with jaxseg sweep --sweep='data.split.fold=[0,1,2,3,4]'.
  c.data.split.folds = 0
  c.data.split.fold = 0

  c.data.augment = ml_collections.ConfigDict()
  c.data.augment.hflip = 0.5  # probabilities
  c.data.augment.vflip = 0.5
  c.data.augment.rot90 = 0.5
  c.data.augment.ssr = 0.0  # probability of shift-scale-rotate
  c.data.augment.ssr_shift = 0.0625  # fraction of the size
  c.data.augment.ssr_scale = 0.1
  c.data.augment.ssr_rotate = 20.0  # degrees
  # Where the geometric transforms and noise / blur run: "device" inside the jitted step,
  # "host" in the Grain workers (same parameters, same warps; volumes get the in-plane warp per
  # slice), "auto" the device on GPUs / TPUs (the GI recipe on the host held an H100 at 50-79 %
  # input wait with 6-12 workers) and the host on CPUs, where the workers are the spare cores.
  c.data.augment.on_device = "auto"
  c.data.augment.noise_or_blur = 0.0  # probability of one of {Gaussian noise, Gaussian blur}
  c.data.augment.noise_std = 0.1  # in units of the normalised image
  c.data.augment.blur_sigma = 1.0  # pixels (drawn from [sigma / 4, sigma])
  c.data.augment.brightness_contrast = 0.0  # probability
  c.data.augment.brightness = 0.2
  c.data.augment.contrast = 0.2
  c.data.augment.gamma = 0.0  # probability of a random gamma
  c.data.augment.gamma_limit = 0.2  # gamma in [1 / 1.2, 1.2]
  # Probability of one of {elastic deformation, grid distortion} (on the device too, with
  # on_device). Elastic: normal displacements of elastic_alpha pixels on an elastic_control^2
  # grid, interpolated; grid: grid_cells per axis, each stretched by up to +-grid_limit.
  c.data.augment.elastic_or_grid = 0.0
  c.data.augment.elastic_alpha = 8.0
  c.data.augment.elastic_control = 5
  c.data.augment.grid_cells = 5
  c.data.augment.grid_limit = 0.3

  c.model = ml_collections.ConfigDict()
  c.model.name = "unet"
  c.model.features = 32
  c.model.depth = 4
  c.model.norm = "batch"  # batch | group | instance | none (project D: batch vs none)
  c.model.dropout = 0.0  # channel dropout after each conv block's activations
  c.model.residual = False  # unet: residual blocks
  # Encoder models (unet_vgg16, unet_resnet50, unet_efficientnet_b3, unetpp_*): encoder stages
  # to freeze, comma-separated (resnet50: stem, layer1..layer4; vgg16: block1..block5;
  # efficientnet_b3: stem, stage1..stage7). Frozen stages get no updates and keep their
  # BatchNorm statistics.
  c.model.freeze = ""
  # A torchvision state dict (.pth or .safetensors) for the encoder, loaded when a run starts
  # from scratch.
  c.model.pretrained = ""
  # Compute dtype: auto (bfloat16 on GPUs / TPUs, float32 on CPUs), float32, bfloat16 or
  # float16; parameters stay float32.
  c.model.dtype = "auto"
  # Convolutions: auto (onednn where it can run, else xla); xla; onednn (CPUs: the float32
  # convolutions, and bfloat16 ones where the CPU has bfloat16 instructions, depthwise ones
  # excepted, by oneDNN, which needs its wheels, in the default
  # install on x86-64 Linux, and a C++ compiler; see BUILD.md's performance notes); or patches
  # (weight gradient as one im2col matmul)
  c.model.conv_impl = "auto"
  c.model.remat = False  # recompute block activations in the backward pass (saves memory)
  c.model.kernel_init = "lecun_normal"  # lecun_normal (Flax) | he_uniform | he_normal | glorot_uniform

  c.loss = ml_collections.ConfigDict()
  c.loss.bce_weight = 1.0
  c.loss.dice_weight = 1.0
  c.loss.smooth = 1.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # adam | adamw | sgd | rmsprop
  c.optim.lr = 1e-4
  c.optim.momentum = 0.9  # sgd and rmsprop only
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.schedule = "cosine"  # cosine | step | constant (after the warm-up)
  c.optim.min_lr = 0.0  # floor of the cosine decay
  c.optim.decay_steps = 0  # length of the cosine (PyTorch's T_max, in steps); 0 = train.steps
  c.optim.step_every = 0  # step schedule: steps between decays (PyTorch StepLR step_size)
  c.optim.step_gamma = 0.9  # step schedule: factor per decay
  c.optim.grad_clip = 0.0  # global-norm clipping; 0 disables

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 250  # also the checkpoint interval; the last step always evaluates
  c.train.keep_checkpoints = 2  # latest N, plus the best by validation Dice
  c.train.threshold = 0.5  # probability threshold for Dice / IoU
  c.train.grad_accum = 1  # micro-batches per optimizer step (batch_size must divide)
  c.train.nan_policy = "stop"  # stop | skip: what a non-finite loss or gradient does

  # Device mesh: 'data' splits the batch (-1 = all devices); 'model' is reserved for sharding
  # parameters and must be 1 today.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.model = 1
  return c


def get_config():
  return default_config()
