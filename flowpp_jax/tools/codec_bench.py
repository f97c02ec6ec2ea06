"""Speed and overhead of the lossless codec on a config's architecture, without data or weights.

  python -m flowpp_jax.tools.codec_bench --config=configs/X.py [--config.FIELD=VALUE ...]
                                         [--images=3] [--batch_size=1] [--init_images=8]

Builds the config's model with the data-dependent init on --init_images smooth random images
(random colour fields, bilinearly upsampled, plus noise: closer to photographs than uniform
noise), then codes --images more such images with the codec of ``flowpp_jax.compress``
(compression/codec.py), --batch_size at a time, on the CPU backend:
- pass 1, as users run it: encode and decode the file; the round trip must be exact. Times
  the first batch each way (compiling included) and the seconds per image of the others.
- pass 2, the accounting: the same file again with every coded layer call recorded
  (flow_coding.LayerCall): each kind of layer's bits against its own -log2 |det J|, and its
  seconds per image each way (a coupling's include its conditioner).
The coded bits are compared with the model's ELBO, -log2 p(x + u) + log2 q(u | x), at the noise
u the coder drew, batch by batch.

Prints the figures and the per-layer table (Markdown) on stdout, then one JSON line with every
figure; progress goes to stderr. An inexact round trip exits with status 1; bad input prints
one `error: ...` line and exits with status 2. One host.
"""
import collections
import json
import platform
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax.compression import codec as codec_lib
from flowpp_jax.model import FlowPlusPlus, init_variables
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()
  flags.adopt_module_key_flags(cli)
  _IMAGES = flags.DEFINE_integer('images', 3, 'Images to code: two or more whole batches (the '
                                 'first compiles, and a partial one would compile again).')
  _BATCH_SIZE = flags.DEFINE_integer('batch_size', 1, 'Images coded together.')
  _INIT_IMAGES = flags.DEFINE_integer('init_images', 8, 'Images of the data-dependent init.')

  _INIT_SEED, _IMAGES_SEED = 0, 1

_COARSE = 5  # the colour fields' resolution before upsampling
_NOISE = 0.02  # the added noise's std, as a fraction of num_levels


def smooth_images(n: int, model_cfg, seed: int) -> np.ndarray:
  """uint8 [n, H, W, C]: random _COARSE x _COARSE colour fields upsampled bilinearly to H x W,
  plus Gaussian noise, rounded into [0, num_levels)."""
  h, w, c = model_cfg.image_shape
  levels = model_cfg.num_levels
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, levels, (n, _COARSE, _COARSE, c))
  fields = np.asarray(jax.image.resize(jnp.asarray(coarse, jnp.float32), (n, h, w, c),
                                       'linear'), np.float64)
  noisy = fields + rng.normal(0.0, _NOISE * levels, fields.shape)
  return np.clip(np.round(noisy), 0, levels - 1).astype(np.uint8)


class _Clock:
  """progress(done, total) of the codec: the time at the end of every batch."""

  def __init__(self):
    self.start = time.perf_counter()
    self.marks = []

  def __call__(self, done: int, total: int) -> None:
    del done, total
    self.marks.append(time.perf_counter())

  def first_and_rest(self, images_after_first: int):
    """(seconds of the first batch, seconds per image of the others)."""
    first = self.marks[0] - self.start
    return first, (self.marks[-1] - self.marks[0]) / images_after_first


def _record_noise(codec):
  """Makes codec.encode_batch append (x, u, eps) of every batch to the returned list."""
  noise, encode_batch = [], codec.encode_batch

  def recording(stack, x):
    u, eps = encode_batch(stack, x)
    noise.append((x, u, eps))
    return u, eps
  codec.encode_batch = recording
  return noise


def per_layer(encode_calls, decode_calls, dims: int, images: int, num_batches: int):
  """Rows (flow, layer, calls per batch, coded bits/dim, -log2 |det J| bits/dim, overhead,
  encode and decode s/image, and of those a coupling's conditioner's) per kind of layer of
  each flow."""
  rows = collections.OrderedDict()
  for direction, calls in (('encode', encode_calls), ('decode', decode_calls)):
    for call in calls:
      key = (call.path.split('/')[0], call.layer)
      row = rows.setdefault(key, {'calls': 0, 'bits': 0, 'log2_det': 0.0, 'encode': 0.0,
                                  'decode': 0.0, 'encode_prepare': 0.0,
                                  'decode_prepare': 0.0})
      row[direction] += call.seconds
      row[f'{direction}_prepare'] += call.prepare_seconds
      if direction == 'encode':
        row['calls'] += 1
        row['bits'] += call.bits
        row['log2_det'] += call.log2_det
  return [{'flow': flow, 'layer': layer, 'calls': row['calls'] // num_batches,
           'coded_bpd': row['bits'] / dims, 'neg_log2_det_bpd': -row['log2_det'] / dims,
           'overhead_bpd': (row['bits'] + row['log2_det']) / dims,
           'encode_s_per_image': row['encode'] / images,
           'decode_s_per_image': row['decode'] / images,
           'encode_conditioner_s_per_image': row['encode_prepare'] / images,
           'decode_conditioner_s_per_image': row['decode_prepare'] / images}
          for (flow, layer), row in rows.items()]


def _init(config, images):
  model = FlowPlusPlus(config.model)
  init = jax.jit(lambda key, x: init_variables(model, x, key)['params'])
  return init(jax.random.PRNGKey(config.seed), images)


def measure(config, count: int, batch_size: int, init_images: int):
  """-> (figures, per-layer rows, exact): see the module's docstring."""
  start = time.perf_counter()
  cli.say(f'data-dependent init on {init_images} smooth random images')
  params = jax.device_get(_init(config, smooth_images(init_images, config.model, _INIT_SEED)))
  figures = {'init_s': time.perf_counter() - start}
  codec = codec_lib.ImageCodec(config.model, params)
  images = smooth_images(count, config.model, _IMAGES_SEED)
  dims = images.size
  after_first = count - batch_size
  noise = _record_noise(codec)

  cli.say(f'pass 1: encode {count} images, {batch_size} per batch')
  clock = _Clock()
  data = codec.encode(images, batch_size=batch_size, progress=clock)
  figures['encode_first_batch_s'], figures['encode_s_per_image'] = clock.first_and_rest(
      after_first)
  report = codec.last_report
  cli.say('pass 1: decode')
  clock = _Clock()
  exact = bool(np.array_equal(codec.decode(data, progress=clock), images))
  figures['decode_first_batch_s'], figures['decode_s_per_image'] = clock.first_and_rest(
      after_first)
  del codec.encode_batch  # back to the class's

  elbo = np.concatenate([codec.elbo_bits(x, u, eps) for x, u, eps in noise])
  batch_elbo = [float(np.sum(elbo[a:b])) for a, b in codec_lib.batches(count, batch_size)]
  figures.update({
      'file_bytes': len(data), 'file_bpd': 8 * len(data) / dims,
      'seed_bits_stored': report['seed_bits_stored'],
      'coded_bpd': sum(report['batch_bits']) / dims, 'elbo_bpd': float(np.sum(elbo)) / dims,
      'batch_overheads': [bits / e - 1 for bits, e in zip(report['batch_bits'], batch_elbo)]})
  figures['overhead'] = figures['coded_bpd'] / figures['elbo_bpd'] - 1

  cli.say('pass 2: the same, each layer call recorded')
  codec.ledger = []
  data = codec.encode(images, batch_size=batch_size)
  encode_calls, codec.ledger = codec.ledger, []
  codec.decode(data)
  rows = per_layer(encode_calls, codec.ledger, dims, count,
                   len(codec_lib.batches(count, batch_size)))
  return figures, rows, exact


def _seconds(row, direction: str) -> str:
  return (f'{row[f"{direction}_s_per_image"]:.3f} '
          f'({row[f"{direction}_conditioner_s_per_image"]:.3f})')


def format_report(info: dict, figures: dict, rows, exact: bool) -> str:
  """The figures, then the per-layer table in Markdown."""
  lines = [f'{info["config"]} {" ".join(info["config_overrides"])}'.rstrip(),
           f'{info["images"]} images {info["image_shape"]}, batch {info["batch_size"]}, '
           f'init on {info["init_images"]}; jax {info["jax"]}, {info["machine"]}',
           f'round trip exact: {exact}',
           f'data-dependent init: {figures["init_s"]:.1f} s',
           f'first batch, compiling included: encode {figures["encode_first_batch_s"]:.1f} s, '
           f'decode {figures["decode_first_batch_s"]:.1f} s',
           f'after it: encode {figures["encode_s_per_image"]:.3f} s/image, decode '
           f'{figures["decode_s_per_image"]:.3f} s/image',
           f'file: {figures["file_bytes"]} bytes, {figures["file_bpd"]:.4f} bits/dim '
           f'(initial bits stored: {figures["seed_bits_stored"]})',
           f'coding alone: {figures["coded_bpd"]:.4f} bits/dim against the ELBO '
           f'{figures["elbo_bpd"]:.4f} at the same noise ({figures["overhead"]:+.3%}); per '
           f'batch: {", ".join(f"{o:+.3%}" for o in figures["batch_overheads"])}',
           '',
           '| flow | layer | calls per batch | coded bits/dim | -log2 abs det J | overhead '
           '| encode s/image (conditioner) | decode s/image (conditioner) |',
           '|---|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append(f'| {row["flow"]} | {row["layer"]} | {row["calls"]} | {row["coded_bpd"]:+.5f} '
                 f'| {row["neg_log2_det_bpd"]:+.5f} | {row["overhead_bpd"]:+.5f} '
                 f'| {_seconds(row, "encode")} | {_seconds(row, "decode")} |')
  total = {key: sum(row[key] for row in rows) for key in rows[0]
           if key.endswith(('_bpd', '_image'))}
  lines.append(f'| all layers | | | | | {total["overhead_bpd"]:+.5f} '
               f'| {_seconds(total, "encode")} | {_seconds(total, "decode")} |')
  lines.append('\n(The layers\' seconds are pass 2\'s, over every batch; the rest of each '
               'image\'s time codes the latent and eps, runs the dequantizer\'s context network '
               'and converts between the grid and float64.)')
  return '\n'.join(lines)


def main(argv):
  cli.refuse_arguments(argv)
  config = cli.load_config(_CONFIG)
  count, batch_size, init_images = _IMAGES.value, _BATCH_SIZE.value, _INIT_IMAGES.value
  if batch_size < 1 or init_images < 1:
    cli.fail(f'--batch_size and --init_images must be >= 1, got {batch_size} and {init_images}')
  if count < 2 * batch_size or count % batch_size:
    cli.fail(f'--images must be a multiple of --batch_size and at least two batches (the '
             f'first compiles), got {count} and {batch_size}')
  if jax.process_count() > 1:
    cli.fail('the codec benchmark runs on one host; run it without jax.distributed')
  try:
    FlowPlusPlus(config.model)  # checks the model config before any progress line
    figures, rows, exact = measure(config, count, batch_size, init_images)
  except ValueError as e:
    cli.fail(f'{e}'.splitlines()[0])
  info = {**cli.config_arguments(sys.argv), 'images': count,
          'image_shape': list(config.model.image_shape), 'batch_size': batch_size,
          'init_images': init_images, 'jax': jax.__version__, 'machine': platform.machine()}
  print(format_report(info, figures, rows, exact))
  print(json.dumps({**info, **figures, 'exact': exact, 'layers': rows}), flush=True)
  if not exact:
    print('error: the round trip was not exact', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main, required='config')
