"""Flow++ on ImageNet 32x32, as the official launcher (168,955,724 parameters; 3.86 bits/dim
in the paper after about 2.5 weeks on 8 V100s). Weight-normalised convs throughout. The
output projection is concat-ELU then a 3x3 conv: the official launcher leaves
use_final_nin at its default (False), and only the 3x3 conv reproduces its parameter count.

  python -m flowpp_jax.main --config=configs/imagenet32.py --mode=summary
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.base_config()
  config.dataset = 'imagenet32'
  net = dict(filters=128, components=32, pointwise=False, weight_norm=True,
             out_concat_elu=True, out_kernel=3)
  config.model = d.model_config(
      image_shape=(32, 32, 3), dropout=0.0,
      main=d.flow_config(layout='checker4 checker3 s2d channel3 checker3', blocks=20, **net),
      dequant=d.dequant_config(layout='checker4 checker4', blocks=8, context_blocks=8,
                               context_layer_norm=True, context_mixer='attention', **net))
  return config
