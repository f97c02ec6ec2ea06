"""Flow++ on ImageNet 32x32 with the official launcher's architecture and training settings
(168,955,724 parameters). Weight-normalised convs throughout. The output projection is
concat-ELU then a 3x3 conv: the official launcher leaves use_final_nin at its default (False),
and only the 3x3 conv reproduces its parameter count.

  python -m flowpp_jax.main --config=configs/imagenet32.py --workdir=workdirs/imagenet32

Meant for 8 accelerators (the paper: 8 V100s, about 2.5 weeks). Expected test bits/dim: 3.86.
The official run length is not recorded; num_train_steps is a budget to adjust.

Layers are scanned (model.scan_layers) so that the train step compiles in about 80 s on a
2-core CPU whatever the depth, and rematerialised (model.remat) to fit. Train step memory from
XLA's compiled memory analysis, the global batch of 32 on one device, with remat: 11.5 GB
(fits a 16 GiB TPU core or an 80 GiB H100). Compiled for a v4-8 by the pre-flight (python -m
flowpp_jax.bench --config=THIS --target=v4-8 --compile_only; docs/tpu.md): 8 images per chip
take 5.7 GiB of its 32.
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'imagenet32'
  config.batch_size = 32
  config.init_batch_size = 32
  config.num_train_steps = 1_000_000
  # Warmup 5k, constant to 50k, then x0.99995 per step down to 3e-4.
  config.lr = d.lr_config(peak=1e-3, warmup_steps=5_000, decay='exponential',
                          decay_start=50_000, decay_rate=0.99995, final=3e-4)
  config.optimizer.ema_decay = 0.999222
  net = dict(filters=128, components=32, pointwise=False, weight_norm=True,
             out_concat_elu=True, out_kernel=3)
  config.model = d.model_config(
      scan_layers=True, remat=True,
      image_shape=(32, 32, 3), dropout=0.0,
      main=d.flow_config(layout='checker4 checker3 s2d channel3 checker3', blocks=20, **net),
      dequant=d.dequant_config(layout='checker4 checker4', blocks=8, context_blocks=8,
                               context_layer_norm=True, context_mixer='attention', **net))
  return config
