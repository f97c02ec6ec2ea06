"""Flow++ on CIFAR-10 with the official launcher's architecture and training settings
(31,443,440 parameters).

  python -m flowpp_jax.main --config=configs/cifar10.py --workdir=workdirs/cifar10

Meant for 8 accelerators (the paper used 8 GPUs at 8 images each; the global batch of 64 is
split over whatever devices JAX sees). Expected test bits/dim: about 3.17 after 400 epochs
(312,500 steps, the paper's ablation budget) and 3.08 when trained to convergence.

Layers are scanned (model.scan_layers) so that the train step compiles in a time that does
not grow with depth: 42-48 s (tracing + XLA) on the 2-core Zen 4 CPU of docs/performance.md,
about 90 s on an older AVX2 one. Train step memory from XLA's compiled memory analysis, per
device: 4.8 GB at 8 images; the global batch of 64 on one device takes 33.6 GB, or 5.3 GB with
--config.model.remat=True (fits a 24 GiB machine).

On TPUs, compiled for them by the pre-flight (python -m flowpp_jax.bench --config=THIS
--target=TYPE --compile_only; docs/tpu.md): the train step fits a v4-8 at the global batch of
64 (16 per chip: 11.7 GiB of 32), a v3-8 (8 per TensorCore: 6.3 GiB of 16), a v5litepod-8
and a v6e-8 (8 per chip: 6.2 and 6.1 GiB of 16 and 32 GiB) and the two hosts of a v4-16.
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'cifar10'
  config.batch_size = 64
  config.init_batch_size = 128
  config.num_train_steps = 312_500  # 400 epochs
  config.lr = d.lr_config(peak=3e-4, warmup_steps=2_000)
  config.optimizer.ema_decay = 0.999
  config.model = d.model_config(
      scan_layers=True,
      image_shape=(32, 32, 3), dropout=0.2,
      main=d.flow_config(layout='checker4 s2d channel2 checker3', filters=96, blocks=10,
                         components=32, pointwise=True),
      dequant=d.dequant_config(layout='checker4', filters=96, blocks=2, components=32,
                               pointwise=True, context_blocks=3, context_layer_norm=False,
                               context_mixer='none'))
  return config
