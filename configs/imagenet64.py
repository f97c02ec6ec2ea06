"""Flow++ on ImageNet 64x64 with the official launcher's architecture and training settings
(73,489,960 parameters). The dequantizer's couplings have no attention.

  python -m flowpp_jax.main --config=configs/imagenet64.py --workdir=workdirs/imagenet64

Meant for 8 accelerators. Expected test bits/dim: 3.69 (the paper); about 200k steps are said to
give good samples. The schedule is the official one's intent: warmup to 4e-4 over 10k steps,
hold to 50k, linear decay to 3e-4 by 55k, hold to 230k, then 1e-5, then 1e-6 from 280k (the
official code's version has holes at the boundaries and a negative stretch).

Layers are scanned (model.scan_layers) so that the train step compiles in about 75 s on a
2-core CPU whatever the depth, and rematerialised (model.remat) to fit. Train step memory from
XLA's compiled memory analysis, the global batch of 72 on one device, with remat: 10.9 GB
(fits a 16 GiB TPU core or an 80 GiB H100). Compiled for TPUs by the pre-flight (python -m
flowpp_jax.bench --config=THIS --target=TYPE --compile_only; docs/tpu.md): the train step
fits a v4-8 at the global batch of 72 (18 per chip: 5.9 GiB of 32), a v3-8 (9 per
TensorCore: 4.6 GiB of 16) and a v5litepod-8 (9 per chip: 4.4 GiB of 16).
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'imagenet64'
  config.batch_size = 72
  config.init_batch_size = 72
  config.num_train_steps = 300_000
  config.lr = d.lr_config(peak=4e-4, warmup_steps=10_000, decay='linear', decay_start=50_000,
                          decay_end=55_000, final=3e-4, drops='230000=1e-5,280000=1e-6')
  config.optimizer.ema_decay = 0.999
  net = dict(filters=96, components=4, pointwise=False, out_concat_elu=True, out_kernel=3)
  config.model = d.model_config(
      scan_layers=True, remat=True,
      image_shape=(64, 64, 3), dropout=0.0,
      main=d.flow_config(layout='s2d checker4 s2d channel2 checker2 s2d channel2 checker2',
                         blocks=16, **net),
      dequant=d.dequant_config(layout='checker4', blocks=5, mixer='none', context_blocks=5,
                               context_layer_norm=True, context_mixer='none', **net))
  return config
