"""Lossless image compression with a trained or imported model (local bits-back coding).

  python -m flowpp_jax.compress --workdir=DIR encode IMAGES OUT [--batch_size=B] [--step=N]
  python -m flowpp_jax.compress --workdir=DIR decode IN IMAGES_OUT

IMAGES: a .npy of uint8 [N, H, W, C], or a folder of PNGs (its *.png, in name order), in the
model's image shape. IMAGES_OUT ending in .npy gets the array, anything else becomes a folder
of PNGs (the encoded files' names, or 00000.png, ... for an array). Neither command overwrites:
OUT and IMAGES_OUT must not exist. The coder: flowpp_jax/compression/codec.py.
"""
import os
import time

from absl import flags

from flowpp_jax.data import images as image_files
from flowpp_jax.runtime import cli, fileio

FLAGS = flags.FLAGS
if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  flags.DEFINE_string('workdir', None, 'The --workdir of a training run or an import.')
  flags.DEFINE_integer('step', None, 'The checkpoint to use (default: the latest).')
  flags.DEFINE_integer(
      'batch_size', 1, 'encode: images coded together. Larger batches run faster per image '
      'but start with more initial bits (about 24 bits per pixel value of a batch).')

USAGE = ('usage: python -m flowpp_jax.compress --workdir=DIR encode IMAGES OUT | '
         'decode IN IMAGES_OUT')


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
      images, names = image_files.read_images(source, model.image_shape)
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
      header = model.codec.read_header(data)
      images = model.decompress(data, progress=codec_lib.Progress('decoded', _say))
      image_files.write_images(target, images, header.names)
      _say(f'decoded {len(images)} images into {target} in '
           f'{time.perf_counter() - start:.1f} s')
  except ValueError as e:  # CodecError included
    cli.fail(f'{e}'.splitlines()[0])


if __name__ == '__main__':
  cli.run(main, required='workdir')
