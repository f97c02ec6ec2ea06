"""Ablation on digits (configs/digits.py): no self-attention in the coupling networks; a
pointwise gated maxout MLP with the attention's parameter count takes its place (637,208
parameters, as digits), as in configs/cifar10_no_attention.py.

  python -m flowpp_jax.main --config=configs/digits_no_attention.py --workdir=workdirs/digits_no_attention

``:tiny`` is the same change on digits' smoke variant.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'digits', variant)
  config.model.main.mixer = 'maxout'
  config.model.dequant.mixer = 'maxout'
  return config
