"""Flow++ on CelebA-HQ 64x64 at 3 bits (8 levels) with the official launcher's architecture
and training settings: the ImageNet 64 model (73,489,960 parameters) at 8 levels.

  python -m flowpp_jax.main --config=configs/celeba64_3bit.py \
    --config.dataset=npy:/path/to/celeba_full_64x64_3bit.npy --workdir=workdirs/celeba64_3bit

Everything else is configs/celeba64_5bit.py's: the official run (8 x 1080 Ti, global batch 56,
20 epochs), no published figure, eval on training images unless data.test_fraction holds some
out, and the same schedule.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'celeba64_5bit')
  d.official_celeba(config, 'celeba_full_64x64_3bit.npy', bits=3)
  return d.tiny_variant(config, variant, __file__)
