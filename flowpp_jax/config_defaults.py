"""Shared pieces of the configs in configs/: each config file starts from these and sets
what the official launcher for its dataset sets."""
import importlib.util
import pathlib

import ml_collections


def flow_config(*, layout: str, filters: int, blocks: int, components: int,
                pointwise: bool, weight_norm: bool = False, out_concat_elu: bool = False,
                out_kernel: int = 3, mixer: str = 'attention', coupling: str = 'mixlogistic',
                heads: int = 4) -> ml_collections.ConfigDict:
  """One flow stack (the main flow, or the dequantizer's flow): layout and coupling nets."""
  return ml_collections.ConfigDict(dict(
      layout=layout, pointwise=pointwise, coupling=coupling, components=components,
      filters=filters, blocks=blocks, heads=heads, mixer=mixer, weight_norm=weight_norm,
      out_concat_elu=out_concat_elu, out_kernel=out_kernel))


def dequant_config(*, kind: str = 'variational', context_features: int = 32,
                   context_blocks: int, context_layer_norm: bool, context_mixer: str,
                   **flow_kwargs) -> ml_collections.ConfigDict:
  """The dequantizer: its flow (as flow_config) plus its context network."""
  cfg = flow_config(**flow_kwargs)
  cfg.kind = kind
  cfg.context_features = context_features
  cfg.context_blocks = context_blocks
  cfg.context_layer_norm = context_layer_norm
  cfg.context_mixer = context_mixer
  return cfg


def model_config(*, image_shape, main, dequant, dropout: float, num_levels: int = 256,
                 norm: str = 'norm', checkerboard: str = 'columns',
                 compute_dtype: str = 'float32', remat: bool = False,
                 scan_layers: bool = False) -> ml_collections.ConfigDict:
  """The model. compute_dtype: 'float32' or 'bfloat16', the dtype of the conditioner nets'
  matmuls and convs (the flow math, log-dets and loss stay float32). remat: recompute each
  coupling step's activations in the backward pass instead of storing them. scan_layers:
  compile repeated coupling steps and conditioner blocks once, as nn.scan loops (compile time
  flat in depth, parameters stacked), instead of unrolled."""
  return ml_collections.ConfigDict(dict(
      image_shape=tuple(image_shape), num_levels=num_levels, dropout=dropout, norm=norm,
      checkerboard=checkerboard, compute_dtype=compute_dtype, remat=remat,
      scan_layers=scan_layers, main=main, dequant=dequant))


def lr_config(*, peak: float, warmup_steps: int, decay: str = 'none', decay_start: int = 0,
              decay_end: int = 0, decay_rate: float = 1.0, final: float = 0.0,
              drops: str = '', drop_warmup_steps: int = 0) -> ml_collections.ConfigDict:
  """The learning-rate schedule (see flowpp_jax/trainer/optim.py): linear warmup to ``peak``, then
  optional decay towards ``final`` from ``decay_start`` ('linear' until ``decay_end``, or
  'exponential' by ``decay_rate`` per step), then the step drops in ``drops``
  ("STEP=LR,STEP=LR"), each reached by a linear ramp from 0 over ``drop_warmup_steps``."""
  return ml_collections.ConfigDict(dict(
      peak=peak, warmup_steps=warmup_steps, decay=decay, decay_start=decay_start,
      decay_end=decay_end, decay_rate=decay_rate, final=final, drops=drops,
      drop_warmup_steps=drop_warmup_steps))


def data_config() -> ml_collections.ConfigDict:
  """How images are read (see flowpp_jax/data/own_images.py for folder: and npy: sources)."""
  return ml_collections.ConfigDict(dict(
      bits=0,               # 0: as stored; n: floor(x / 2^(stored_bits - n)), 2^n levels
      stored_bits=8,        # bits of the values in the files (the official CelebA .npy: 5, 3)
      test_fraction=0.05,   # folder:/npy: without a given test split; 0: eval on train images
      split_seed=0,         # which images that fraction holds out
      resize=True,          # other sizes: centre-crop and resize; False: refuse them
      cache_dir='',         # decoded images; '' means ~/.cache/flowpp_jax
  ))


def base_config() -> ml_collections.ConfigDict:
  """Fields every config has; the dataset configs fill in ``model`` and override the rest.

  The names dataset, batch_size, num_train_steps, seed, log_every_steps, eval_every_steps,
  checkpoint_every_steps, eval.num_examples and eval.num_iw_samples are fixed: scripts use them.
  """
  config = ml_collections.ConfigDict()
  config.dataset = ''
  config.data_dir = ''              # tfds data_dir; '' means tfds' default (~/tensorflow_datasets)
  config.data = data_config()
  config.seed = 0
  config.batch_size = 64            # global, over every device and host
  config.init_batch_size = 128      # images for the data-dependent init
  config.num_train_steps = 100_000
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.sample_every_steps = 5_000  # 0: never during training
  config.keep_checkpoints = 3
  # After the first step (the compile), this many steps traced with jax.profiler into
  # WORKDIR/tensorboard (TensorBoard's Profile tab); 0: none.
  config.profile_steps = 0
  # Official optimiser: Adam (TensorFlow's epsilon placement), no weight decay, on the gradient
  # of the mean nats per image clipped at global norm grad_clip_norm.
  config.optimizer = ml_collections.ConfigDict(dict(
      b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0, ema_decay=0.999,
      max_nonfinite_in_row=20))
  config.lr = lr_config(peak=3e-4, warmup_steps=2_000)
  config.eval = ml_collections.ConfigDict(dict(
      num_examples=0,               # 0: the whole test split
      num_iw_samples=16,            # K of the importance-weighted bound in --mode=eval
      batch_size=64,                # global
      train_num_examples=1_000))    # test images for the periodic ELBO during training
  config.sample = ml_collections.ConfigDict(dict(num=64, temperature=1.0))
  config.model = ml_collections.ConfigDict()
  return config


def config_from_file(path, *args) -> ml_collections.ConfigDict:
  """get_config(*args) of the config file at ``path`` (e.g. 'configs/cifar10.py')."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f'flowpp_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def sibling_config(this_file: str, name: str, *args) -> ml_collections.ConfigDict:
  """get_config(*args) of configs/<name>.py, found next to ``this_file``: lets an ablation
  config start from the config it varies without making configs/ a package."""
  return config_from_file(pathlib.Path(this_file).with_name(f'{name}.py'), *args)


def official_celeba(config, filename: str, bits: int) -> None:
  """The official CelebA launchers' data: the authors' ``bits``-bit array ``filename``, every
  image for training (eval then scores training images; see configs/celeba64_5bit.py)."""
  config.dataset = f'npy:{filename}'
  config.data.stored_bits = bits
  config.data.test_fraction = 0.0
  config.model.num_levels = 2 ** bits
  config.eval.num_examples = 10_000


def tiny_variant(config, variant: str, this_file: str) -> ml_collections.ConfigDict:
  """``config`` (variant ''), or its 'tiny' variant: the same layouts and levels at a quarter
  of the side and with 8-filter, 1-block couplings, for tests of the large configs."""
  if variant == 'tiny':
    h, w, c = config.model.image_shape
    config.model.image_shape = (h // 4, w // 4, c)
    net = dict(filters=8, blocks=1, components=2, heads=2)
    config.model.main.update(net)
    config.model.dequant.update(context_features=8, context_blocks=1, **net)
    config.update(batch_size=4, init_batch_size=4)
  elif variant:
    raise ValueError(f'{pathlib.Path(this_file).name} knows the variant "tiny", got {variant!r}')
  return config
