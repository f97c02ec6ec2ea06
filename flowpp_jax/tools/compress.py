"""Lossless image compression with a trained or imported model (local bits-back coding).

  python -m flowpp_jax.compress --workdir=DIR encode IMAGES OUT [--batch_size=B] [--step=N]
  python -m flowpp_jax.compress --workdir=DIR decode IN IMAGES_OUT [--ignore_environment]

IMAGES: a .npy of uint8 [N, H, W, C], or a folder of PNGs (its *.png, in name order), in the
model's image shape. IMAGES_OUT ending in .npy gets the array, anything else becomes a folder
of PNGs (the encoded files' names, or 00000.png, ... for an array). Neither command overwrites:
OUT and IMAGES_OUT must not exist. The coder: flowpp_jax/compression/codec.py.
"""
import os
import pathlib
import sys
import time

from absl import flags
import numpy as np
from PIL import Image

from flowpp_jax.runtime import cli, fileio

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs: other modules import this one (its image
  readers) beside flowpp_jax.main, which has a --workdir of its own."""
  flags.DEFINE_string('workdir', None, 'The --workdir of a training run or an import.')
  flags.DEFINE_integer('step', None, 'The checkpoint to use (default: the latest).')
  flags.DEFINE_integer(
      'batch_size', 1, 'encode: images coded together. Larger batches run faster per image '
      'but start with more initial bits (about 24 bits per pixel value of a batch).')
  flags.DEFINE_bool(
      'ignore_environment', False, 'decode: try even where jax, jaxlib or the CPU differ '
      'from the encoder\'s (a checksum of the images refuses a wrong result).')


USAGE = ('usage: python -m flowpp_jax.compress --workdir=DIR encode IMAGES OUT | '
         'decode IN IMAGES_OUT')
_MODES = {1: 'L', 3: 'RGB'}


def read_images(path: str, shape):
  """IMAGES -> (uint8 [N, H, W, C], names: the PNG files' names, () for an array)."""
  source = pathlib.Path(path)
  if source.is_dir():
    files = sorted(p for p in source.iterdir() if p.suffix.lower() == '.png')
    if not files:
      raise ValueError(f'{path} holds no .png files')
    return np.stack([_read_png(p, shape) for p in files]), tuple(p.name for p in files)
  if source.suffix != '.npy':
    raise ValueError(f'{path}: IMAGES must be a .npy file or a folder of PNGs')
  try:
    images = np.load(source, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  return images, ()


def _read_png(path: pathlib.Path, shape) -> np.ndarray:
  height, width, channels = shape
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      array = np.asarray(image)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'cannot read image {path}: {e}') from None
  if mode != _MODES.get(channels):
    raise ValueError(f'{path} is a {mode} image; the model codes {_MODES.get(channels, "?")} '
                     f'images ({channels} channel(s)): convert it first')
  if array.shape[:2] != (height, width):
    raise ValueError(f'{path} is {array.shape[1]}x{array.shape[0]}, the model codes '
                     f'{width}x{height} images')
  return array.reshape(height, width, channels)


def write_images(path: str, images: np.ndarray, names) -> None:
  """uint8 [N, H, W, C] -> IMAGES_OUT (a .npy or a new folder of PNGs), written beside and
  renamed into place."""
  folder = not path.endswith('.npy')
  with fileio.replaced(path, folder=folder) as partial:
    if not folder:
      with open(partial, 'wb') as f:
        np.save(f, images)
      return
    names = names or tuple(f'{i:05d}.png' for i in range(len(images)))
    for name, image in zip(names, images):
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image,
                      _MODES[image.shape[-1]]).save(partial / name)


def _refuse_existing(path: str) -> None:
  if os.path.lexists(path):
    cli.fail(f'{path} exists; choose another name or remove it (nothing is overwritten)')


def _say(line: str) -> None:
  print(line, flush=True)


def main(argv):
  args = argv[1:]
  if len(args) != 3 or args[0] not in ('encode', 'decode'):
    cli.fail(f'{USAGE}; got {" ".join(args) or "no arguments"}')
  command, source, target = args
  if not os.path.exists(source):
    cli.fail(f'{source} not found')
  _refuse_existing(target)
  # Imported here so that usage errors stay fast.
  from flowpp_jax import api  # pylint: disable=g-import-not-at-top
  from flowpp_jax.compression import codec as codec_lib  # pylint: disable=g-import-not-at-top
  try:
    model = api.load(FLAGS.workdir, FLAGS.step)
    start = time.perf_counter()
    if command == 'encode':
      images, names = read_images(source, model.image_shape)
      data = model.compress(images, batch_size=FLAGS.batch_size, names=names,
                            progress=codec_lib.Progress('encoded', _say))
      fileio.write_bytes(target, data)
      report = model.codec.last_report
      dims = images.size
      _say(f'encoded {len(images)} images into {target} in {time.perf_counter() - start:.1f} '
           f's: {len(data)} bytes, {8 * len(data) / dims:.4f} bits/dim (the coding alone: '
           f'{sum(report["batch_bits"]) / dims:.4f}; initial bits stored: '
           f'{report["seed_bits_stored"]})')
    else:
      with open(source, 'rb') as f:
        data = f.read()
      header = model.codec.read_header(data, FLAGS.ignore_environment)
      images = model.decompress(data, ignore_environment=FLAGS.ignore_environment,
                                progress=codec_lib.Progress('decoded', _say))
      write_images(target, images, header.names)
      _say(f'decoded {len(images)} images into {target} in '
           f'{time.perf_counter() - start:.1f} s')
  except ValueError as e:  # CodecError included
    cli.fail(f'{e}'.splitlines()[0])


def run() -> None:
  define_flags()
  cli.run(main, required='workdir')
