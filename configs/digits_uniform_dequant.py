"""Ablation on digits (configs/digits.py): uniform dequantization in place of the variational
dequantizer, as configs/cifar10_uniform_dequant.py. The main flow's conditioners are widened
to F = 52 to hold the parameter count level, as the paper's ablation does (626,048 parameters
against digits' 637,208; F = 54 would give 667,576).

  python -m flowpp_jax.main --config=configs/digits_uniform_dequant.py --workdir=workdirs/digits_uniform_dequant

``:tiny`` is the same change on digits' smoke variant, not widened.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'digits', variant)
  config.model.dequant.kind = 'uniform'
  if not variant:
    config.model.main.filters = 52
  return config
