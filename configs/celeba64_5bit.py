"""Flow++ on CelebA-HQ 64x64 at 5 bits (32 levels) with the official launcher's architecture
and training settings: the ImageNet 64 model (73,489,960 parameters) at 32 levels.

  python -m flowpp_jax.main --config=configs/celeba64_5bit.py \
    --config.dataset=npy:/path/to/celeba_full_64x64_5bit.npy --workdir=workdirs/celeba64_5bit

Trains on the authors' array (already 5-bit, data.stored_bits = 5), linked from the official
flows_celeba/README.md. The official run: 8 processes on an 8-GPU (1080 Ti) machine, global
batch 56, 20 epochs in which each process passes over the whole file with 7 images a step
(85,714 steps for 30,000 images). The official code reports only training bits/dim, in its
logs, and publishes no figure.

Hardware: compiled for a v4-8 by the pre-flight (python -m flowpp_jax.bench --config=THIS
--target=v4-8 --compile_only; docs/tpu.md), 14 images per chip take 4.8 GiB of its 32.

Eval: the official launchers train on every image and hold none out, and so does this config
(data.test_fraction = 0): --mode=eval then scores the first 10,000 training images and labels
the result 'train'. --config.data.test_fraction=0.05 holds out a test split instead.

The schedule is the official one's intent: warmup to 4e-5 over 20k steps, hold to 50k, then
x0.9995 per step down to 1e-5 (reached at step 52,773), and 1e-5 after.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'imagenet64')
  d.official_celeba(config, 'celeba_full_64x64_5bit.npy', bits=5)
  config.update(batch_size=56, init_batch_size=56, num_train_steps=85_714)
  config.lr = d.lr_config(peak=4e-5, warmup_steps=20_000, decay='exponential',
                          decay_start=50_000, decay_rate=0.9995, final=1e-5)
  return d.tiny_variant(config, variant, __file__)
