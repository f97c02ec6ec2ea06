"""Flow++ on scikit-learn's digits (8x8 grayscale, 17 levels): the default job, which needs no
download and trains on a 2-core CPU in minutes.

  python -m flowpp_jax.main --config=configs/digits.py --workdir=workdirs/digits

Meant for any CPU. On a 2-core CPU it runs in about 3 minutes (600 steps at ~7 steps/s, plus
compilation) and reaches 1.86 bits/dim on the test split (ELBO; 1.79 importance-weighted with
K = 16); a uniform model of 17 levels scores log2(17) = 4.09. The architecture is the
CIFAR-10 one scaled down: the same kinds of layers, fewer and smaller.

``--config=configs/digits.py:tiny`` is a seconds-long smoke version that the tests use.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.base_config()
  config.dataset = 'digits'
  config.batch_size = 64
  config.init_batch_size = 128
  config.num_train_steps = 600
  config.log_every_steps = 25
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.sample_every_steps = 200
  config.lr = d.lr_config(peak=2e-3, warmup_steps=100)
  config.optimizer.ema_decay = 0.99
  config.eval.num_examples = 0
  config.eval.num_iw_samples = 16
  config.eval.batch_size = 120
  config.eval.train_num_examples = 360
  config.sample.num = 64
  # Fewer, wider couplings than CIFAR-10's: on a CPU, XLA's compile time grows with depth.
  net = dict(blocks=1, components=8, heads=2, pointwise=True)
  config.model = d.model_config(
      image_shape=(8, 8, 1), num_levels=17, dropout=0.1,
      main=d.flow_config(layout='checker2 s2d channel2 checker2', filters=48, **net),
      dequant=d.dequant_config(layout='checker2', filters=32, context_features=16,
                               context_blocks=1, context_layer_norm=False,
                               context_mixer='none', **net))
  if variant == 'tiny':
    tiny = dict(filters=8, blocks=1, components=4)
    config.model.main.update(layout='checker2 s2d channel1', **tiny)
    config.model.dequant.update(layout='checker1', context_features=8, **tiny)
    config.update(batch_size=16, init_batch_size=16, num_train_steps=24, log_every_steps=4,
                  eval_every_steps=12, checkpoint_every_steps=6, sample_every_steps=12)
    config.eval.update(num_examples=40, num_iw_samples=4, batch_size=20, train_num_examples=40)
    config.sample.num = 16
  elif variant:
    raise ValueError(f'configs/digits.py knows the variant "tiny", got {variant!r}')
  return config
