"""CIFAR-10 ablation: uniform dequantization, conditioners widened to F = 104 to keep the
parameter budget (32,324,408 parameters). The paper's ablation reached 3.292 bits/dim after
400 epochs (Flow++: 3.165). Hardware as configs/cifar10.py; on a v4-8 the train step takes
9.5 GiB of a chip's 32 at 16 images (the pre-flight, docs/tpu.md).

  python -m flowpp_jax.main --config=configs/cifar10_uniform_dequant.py --workdir=workdirs/c10_uniform
"""
from flowpp_jax import config_defaults as d


def get_config():
  config = d.sibling_config(__file__, 'cifar10')
  config.model.dequant.kind = 'uniform'
  config.model.main.filters = 104
  return config
