"""Flow++ on ImageNet 64x64 reduced to 5 bits (32 levels, floor(x / 8)) with the official
launcher's architecture and training settings: the ImageNet 64 model (73,489,960 parameters),
whose logit preprocessing and dequantizer context scale by 32 levels instead of 256.

  python -m flowpp_jax.main --config=configs/imagenet64_5bit.py --workdir=workdirs/imagenet64_5bit

Reads the same prepared data as configs/imagenet64.py (`python -m flowpp_jax.prepare
--dataset=imagenet64`) and reduces it while reading (data.bits = 5). The official run: 5
processes on an 8-GPU (1080 Ti) machine, global batch 60, 2 epochs (each process passes over
the whole training set, 12 images a step: 213,524 steps). The official code reports no
bits/dim for this model; Flow++'s paper has none either.

The schedule is the official one's intent: warmup to 4e-4 over 10k steps, hold to 50k, x0.9995
per step down to 3e-4 (reached at step 50,576), hold to 110k, then a second warmup from 0 to
1e-5 over 20k steps and 1e-5 after (the official function returns None at steps 10k and 50k).

Hardware: compiled for a v4-8 by the pre-flight (python -m flowpp_jax.bench --config=THIS
--target=v4-8 --compile_only; docs/tpu.md), 15 images per chip take 4.9 GiB of its 32. The
batch of 60 does not divide over the 8 devices of a v3-8, v5litepod-8 or v6e-8: there, set
--config.batch_size=64.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'imagenet64')
  config.data.bits = 5
  config.model.num_levels = 32
  config.batch_size = 60
  config.init_batch_size = 60
  config.num_train_steps = 213_524
  config.lr = d.lr_config(peak=4e-4, warmup_steps=10_000, decay='exponential',
                          decay_start=50_000, decay_rate=0.9995, final=3e-4,
                          drops='110000=1e-5', drop_warmup_steps=20_000)
  return d.tiny_variant(config, variant, __file__)
