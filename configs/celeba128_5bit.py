"""Flow++ on CelebA-HQ 128x128 at 5 bits (32 levels) with the official launcher's architecture
and training settings (122,790,952 parameters): the ImageNet 64 model with one more
SpaceToDepth in front and 12 blocks per coupling; the dequantizer works at 128x128.

  python -m flowpp_jax.main --config=configs/celeba128_5bit.py \
    --config.dataset=npy:/path/to/celeba_128pixels_5bit_full.npy --workdir=workdirs/celeba128

The official launcher reads celeba_128pixels_5bit_full.npy, which the official README does not
link: build it from CelebA-HQ yourself (uint8 [N, 128, 128, 3], values floor(x / 8)), or point
--config.dataset=folder:/path at the images with --config.data.bits=5. The official run: 8
processes on an 8-GPU (1080 Ti) machine, global batch 48, an init batch of 64, 1000 epochs (in
effect: until stopped); num_train_steps is a budget to adjust. No published figure. Eval as in
configs/celeba64_5bit.py.

Schedule: warmup to 1e-5 over 50k steps, then constant (the official docstring says 20k; its
code uses 50k).

Hardware: compiled for a v4-8 by the pre-flight (python -m flowpp_jax.bench --config=THIS
--target=v4-8 --compile_only; docs/tpu.md), 12 images per chip take 11.9 GiB of its 32.
"""
from flowpp_jax import config_defaults as d


def get_config(variant: str = ''):
  config = d.sibling_config(__file__, 'imagenet64')
  d.official_celeba(config, 'celeba_128pixels_5bit_full.npy', bits=5)
  config.update(batch_size=48, init_batch_size=64, num_train_steps=1_000_000)
  config.lr = d.lr_config(peak=1e-5, warmup_steps=50_000)
  config.model.image_shape = (128, 128, 3)
  config.model.main.update(
      layout='s2d s2d checker4 s2d channel2 checker2 s2d channel2 checker2', blocks=12)
  return d.tiny_variant(config, variant, __file__)
