"""Flow++ on ImageNet 64x64, as the official launcher (73,489,960 parameters; 3.69 bits/dim
in the paper). The dequantizer's couplings have no attention.

  python -m flowpp_jax.main --config=configs/imagenet64.py --mode=summary
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'imagenet64'
  net = dict(filters=96, components=4, pointwise=False, out_concat_elu=True, out_kernel=3)
  config.model = d.model_config(
      image_shape=(64, 64, 3), dropout=0.0,
      main=d.flow_config(layout='s2d checker4 s2d channel2 checker2 s2d channel2 checker2',
                         blocks=16, **net),
      dequant=d.dequant_config(layout='checker4', blocks=5, mixer='none', context_blocks=5,
                               context_layer_norm=True, context_mixer='none', **net))
  return config
