"""Ablation on digits (configs/digits.py): affine coupling in place of the logistic-mixture
CDF coupling, as configs/cifar10_affine.py. The conditioners are widened to hold the parameter
count level, as the paper's ablation does: F = 56 in the main flow and 38 in the dequantizer
(641,116 parameters against digits' 637,208).

  python -m flowpp_jax.main --config=configs/digits_affine.py --workdir=workdirs/digits_affine

``:tiny`` is the same change on digits' smoke variant, not widened.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'digits', variant)
  for flow in (config.model.main, config.model.dequant):
    flow.coupling = 'affine'
  if not variant:
    config.model.main.filters = 56
    config.model.dequant.filters = 38
  return config
