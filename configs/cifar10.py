"""Flow++ on CIFAR-10, as the official launcher (31,443,440 parameters; 3.08 bits/dim in the
paper after 8 GPUs x ~weeks of training).

  python -m flowpp_jax.main --config=configs/cifar10.py --mode=summary
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'cifar10'
  config.model = d.model_config(
      image_shape=(32, 32, 3), dropout=0.2,
      main=d.flow_config(layout='checker4 s2d channel2 checker3', filters=96, blocks=10,
                         components=32, pointwise=True),
      dequant=d.dequant_config(layout='checker4', filters=96, blocks=2, components=32,
                               pointwise=True, context_blocks=3, context_layer_norm=False,
                               context_mixer='none'))
  return config
