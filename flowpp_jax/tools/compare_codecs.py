"""The model's lossless codec against ordinary ones, on the same images.

  python -m flowpp_jax.tools.compare_codecs --workdir=DIR IMAGES.npy [--batch_size=B]

Prints a Markdown table of bytes and bits per pixel value for: the model's file (and its
coding alone, and per image after the first, against the ELBO that --mode=eval computes), PNG
(Pillow, optimize) per image and as one tiled image, WebP lossless (Pillow, method 6) per image
and tiled, and lzma (preset 9e) and bz2 of the raw array; then the encode and decode times.
"""
import bz2
import io
import lzma
import time

from absl import flags
import numpy as np
from PIL import Image

from flowpp_jax.data import images as image_files
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a training run or an import.')
  _BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Images coded together, as '
                                     'python -m flowpp_jax.compress --batch_size.')


def _pillow(image: np.ndarray, **options) -> int:
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, **options)
  return buffer.tell()


def tile(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] -> one [rows H, cols W, C] image, as square as N allows (zeros pad)."""
  n, h, w, c = images.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  padded = np.zeros((rows * cols, h, w, c), images.dtype)
  padded[:n] = images
  return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
      rows * h, cols * w, c)


def ordinary_sizes(images: np.ndarray) -> dict:
  """Bytes of each ordinary codec on uint8 [N, H, W, C]."""
  png = dict(format='PNG', optimize=True)
  webp = dict(format='WEBP', lossless=True, quality=100, method=6)
  raw = images.tobytes()
  return {
      'PNG, one file per image': sum(_pillow(im, **png) for im in images),
      'PNG, one tiled image': _pillow(tile(images), **png),
      'WebP lossless, one file per image': sum(_pillow(im, **webp) for im in images),
      'WebP lossless, one tiled image': _pillow(tile(images), **webp),
      'lzma of the raw array': len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
      'bz2 of the raw array': len(bz2.compress(raw, 9)),
  }


def main(argv):
  if len(argv) != 2:
    cli.fail('usage: python -m flowpp_jax.tools.compare_codecs --workdir=DIR IMAGES.npy')
  from flowpp_jax import api  # pylint: disable=g-import-not-at-top
  try:
    model = api.load(_WORKDIR.value)
    images, _ = image_files.read_images(argv[1], model.image_shape)
    images = model.codec.check_images(images)
    elbo = float(np.mean(model.bpd(images, seed=0)))
    start = time.perf_counter()
    data = model.compress(images, batch_size=_BATCH_SIZE.value)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    exact = bool(np.array_equal(model.decompress(data), images))
    decode_s = time.perf_counter() - start
  except ValueError as e:
    cli.fail(f'{e}'.splitlines()[0])
  dims = images.size
  first = int(np.prod(images.shape[1:])) * min(_BATCH_SIZE.value, len(images))
  bits = model.codec.last_report['batch_bits']
  print(f'{len(images)} images {list(images.shape[1:])}; ELBO (--mode=eval) {elbo:.4f} '
        f'bits/dim; round trip exact: {exact}\n')
  print('| codec | bytes | bits/dim |\n|---|---|---|')
  rows = {'flowpp_jax file (all of it)': len(data)}
  rows.update(ordinary_sizes(images))
  for name, size in rows.items():
    print(f'| {name} | {size} | {8 * size / dims:.4f} |')
  after_first = sum(bits[1:]) / max(dims - first, 1)
  print(f'\nflowpp_jax: the coding alone {sum(bits) / dims:.4f} bits/dim; per image after the '
        f'first batch {after_first:.4f} ({after_first / elbo - 1:+.2%} against the ELBO); '
        f'whole file {8 * len(data) / dims / elbo - 1:+.2%}; initial bits stored '
        f'{model.codec.last_report["seed_bits_stored"]}; encode {encode_s:.1f} s, decode '
        f'{decode_s:.1f} s (compiling included)')


if __name__ == '__main__':
  cli.run(main, required='workdir')
