"""Speed, cost and numerical exactness of one config on the devices JAX sees.

  python -m flowpp_jax.bench --config=configs/X.py [--config.FIELD=VALUE ...] [--steps=5]
                             [--sample_num=64] [--compile_only]

Runs the trainer's own code: steps.train_step pmapped by loop.make_train_step, the periodic
evaluator (evaluate.make_evaluator), the sampler (sampling.make_sampler) and the data-dependent
init (Experiment.init_state), on random uint8 images of the config's model.image_shape and
num_levels instead of the data set (nothing is read or downloaded). Measures the train step's
lowering and compilation time, step time and images/s at the global config.batch_size, FLOPs
per image (XLA's cost analysis of the compiled train step, per device, over the per-device
batch: the optimiser update is included, amortised; and of a forward ELBO pass; counted on
the lowered program without loops: no model.scan_layers, no model.remat, the attention in one
block; see plain_config),
MFU, device memory (XLA's memory analysis of the compiled step, and the runtime peak where the
device reports one), eval images/s at config.eval.batch_size, the time to sample --sample_num
images and its ratio to one forward pass on as many images, and max |y - f^-1(f(y))| of the
main flow on real-valued y. --compile_only stops after compilation: nothing is initialised or
run, so it sizes configs too large to run on this machine.

Prints a table (what, value, unit) on stdout, then one JSON line with every figure in SI units
(seconds, bytes, FLOPs); figures that do not apply (MFU on a CPU or an unlisted device, the
runtime memory peak on a CPU) are "n/a" in the table and null in the JSON. Progress goes to
stderr. Bad input prints one `error: ...` line on stderr and exits with status 2. One host.
"""
if __name__ == '__main__':  # before the heavy imports, which a re-execution would repeat
  from flowpp_jax.runtime import host_memory
  host_memory.reexec_with_huge_pages()

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax import model as model_lib
from flowpp_jax.nn import backend
from flowpp_jax.runtime import accelerators, cli, cpu_devices, parallel
from flowpp_jax.trainer import evaluate, experiment, interrupt, loop, sampling, steps

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()
  flags.adopt_module_key_flags(cli)

  _STEPS = flags.DEFINE_integer('steps', 5, 'Timed repetitions of each measurement (train '
                                'steps, eval batches, forward passes, samplings), after one '
                                'untimed warm-up.')
  _SAMPLE_NUM = flags.DEFINE_integer('sample_num', 64, 'Images per sampling (and per forward '
                                     'pass it is compared with, and per reconstruction check).')
  _COMPILE_ONLY = flags.DEFINE_bool('compile_only', False, 'Only lower and compile: report '
                                    'compile time, FLOPs and XLA memory analysis.')
  _TARGET = flags.DEFINE_string(
      'target', None, 'With --compile_only: compile for this Cloud TPU slice or GPU machine '
      'instead of the local devices (an accelerator type: v3-8, v4-8, v4-16, v5litepod-8, '
      "v6e-8, ..., a100-8, h100-8); needs libtpu (the [tpu] extra) or jax[cuda12]. See "
      'docs/tpu.md.')
  _MAX_BATCH_COMPILES = flags.DEFINE_integer(
      'max_batch_compiles', 6, 'With --target: compiles spent looking for the largest '
      'per-device batch that fits (0: none).')


# Seeds of the random stand-in images (the config's seed drives the model's randomness).
_TRAIN_SEED, _TEST_SEED, _BATCH_SEED, _ROUNDTRIP_SEED = 0, 1, 2, 3

# (figure, what, unit, scale to the unit): the table's rows, in order. The JSON holds the
# figures unscaled.
ROWS = (
    ('train_lower_s', 'train step: tracing and lowering', 's', 1),
    ('train_compile_s', 'train step: XLA compilation', 's', 1),
    ('train_step_s', 'train step: time per step', 's', 1),
    ('train_images_per_s', 'train: throughput', 'images/s', 1),
    ('train_flops_per_image', 'train step: FLOPs per image (XLA cost analysis)', 'GFLOP', 1e-9),
    ('forward_flops_per_image', 'forward (ELBO): FLOPs per image', 'GFLOP', 1e-9),
    ('train_flops_per_s', 'train: achieved FLOP/s, all devices', 'TFLOP/s', 1e-12),
    ('peak_flops_per_s_per_device', 'peak FLOP/s per device at compute dtype', 'TFLOP/s',
     1e-12),
    ('mfu', 'train: model FLOPs utilisation', '%', 100),
    ('train_memory_bytes', 'train step memory per device (XLA: args+out+temp-alias)', 'MiB',
     2**-20),
    ('train_memory_argument_bytes', '  of which arguments', 'MiB', 2**-20),
    ('train_memory_output_bytes', '  of which outputs', 'MiB', 2**-20),
    ('train_memory_temp_bytes', '  of which temporaries', 'MiB', 2**-20),
    ('train_memory_alias_bytes', '  less outputs aliased to (donated) arguments', 'MiB',
     2**-20),
    ('init_peak_memory_bytes', 'device memory peak after init (runtime, max over devices)',
     'MiB', 2**-20),
    ('peak_memory_bytes', 'device memory peak after the train steps too', 'MiB', 2**-20),
    ('eval_images_per_s', 'eval (ELBO): throughput', 'images/s', 1),
    ('forward_s', 'forward (ELBO) pass on sample_num images', 's', 1),
    ('sample_s', 'sampling sample_num images', 's', 1),
    ('sample_to_forward_ratio', 'sampling time / forward time', 'x', 1),
    ('reconstruction_max_abs_error', 'max |y - f^-1(f(y))|, main flow, real-valued y',
     'data units', 1),
)


# The pre-flight's rows (--target): compile-only figures for a TPU slice or GPU machine
# (preflight.py).
TARGET_ROWS = (
    ('train_lower_s', 'train step: tracing and lowering', 's', 1),
    ('train_compile_s', 'train step: XLA compilation (on this CPU)', 's', 1),
    ('train_memory_bytes', 'train step memory per device (XLA: args+out+temp-alias)', 'GiB',
     2**-30),
    ('train_memory_argument_bytes', '  of which arguments', 'GiB', 2**-30),
    ('train_memory_output_bytes', '  of which outputs', 'GiB', 2**-30),
    ('train_memory_temp_bytes', '  of which temporaries', 'GiB', 2**-30),
    ('train_memory_alias_bytes', '  less outputs aliased to (donated) arguments', 'GiB', 2**-30),
    ('device_memory_bytes', 'HBM per device (published)', 'GiB', 2**-30),
    ('available_memory_bytes', 'of which a program may use', 'GiB', 2**-30),
    ('fits', 'train step fits at the config\'s batch', '', None),
    ('max_per_device_batch', 'largest per-device batch that fits (compiled)', 'images', 1),
    ('train_flops_per_image', 'train step: FLOPs per image (XLA cost analysis)', 'GFLOP', 1e-9),
    ('train_bytes_accessed', 'train step: bytes moved per device (XLA cost analysis)', 'GB',
     1e-9),
    ('train_step_compute_bound_s', 'LOWER BOUND, not a prediction: FLOPs / peak FLOP/s', 'ms',
     1e3),
    ('train_step_memory_bound_s', 'LOWER BOUND, not a prediction: bytes / HBM bandwidth',
     'ms', 1e3),
    ('train_step_lower_bound_s', 'LOWER BOUND on the step time (the larger)', 'ms', 1e3),
    ('eval_compile_s', 'periodic evaluator: XLA compilation', 's', 1),
    ('eval_memory_bytes', 'periodic evaluator memory per device', 'GiB', 2**-30),
    ('sample_compile_s', 'sampler (decoding): XLA compilation', 's', 1),
    ('sample_memory_bytes', 'sampler memory per device', 'GiB', 2**-30),
)


def random_images(n: int, model_cfg, seed: int) -> np.ndarray:
  """uint8 [n, H, W, C], uniform over the config's num_levels."""
  return np.random.default_rng(seed).integers(
      0, model_cfg.num_levels, (n, *model_cfg.image_shape), dtype=np.uint8)


class SyntheticExperiment(experiment.Experiment):
  """An Experiment whose splits are random images (no data set is opened) and whose workdir is
  a temporary directory, removed by close(). The train split holds the init batch; the test
  split ``num_test`` images for the evaluator."""

  def __init__(self, config, num_test: int, device_count=None):
    self._tmp = tempfile.TemporaryDirectory(prefix='flowpp_bench_')
    try:
      super().__init__(config, self._tmp.name, device_count=device_count)
    except BaseException:
      self._tmp.cleanup()
      raise
    self._splits = {'train': random_images(config.init_batch_size, config.model, _TRAIN_SEED),
                    'test': random_images(num_test, config.model, _TEST_SEED)}

  def source(self, split: str):
    return self._splits[split]

  def close(self) -> None:
    self.checkpoints.close()  # joins orbax's threads
    self._tmp.cleanup()


def make_forward(model):
  """pmap (params, images, keys) -> bits/dim: one ELBO pass, dropout off, the examples split
  over the local devices as the evaluator splits them (parallel.split_examples: images
  [devices, m, H, W, C], keys [devices, m, ...], bits/dim [devices, m])."""
  return jax.pmap(functools.partial(steps.per_example_bpd, model, deterministic=True),
                  axis_name=parallel.AXIS)


def per_device(tree, count=None):
  """ShapeDtypeStructs of ``tree`` with a leading axis of ``count`` devices (default: the
  local ones), as pmap takes them."""
  count = count or jax.local_device_count()
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((count, *np.shape(x)), x.dtype), tree)


def compile_timed(fn, *args):
  """(compiled, lowering seconds, compilation seconds) of jitted or pmapped ``fn`` on ``args``
  (arrays or ShapeDtypeStructs). Timed apart: lowering is Python tracing, compiling is XLA.
  With a persistent compilation cache a hit makes the compile time that of a load."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at


def cost_figure(stage, key: str):
  """One figure of XLA's cost analysis of a lowered or compiled program on one device ('flops',
  'bytes accessed'), or None when the backend gives none. Older jax returns a list of one dict
  per program, newer a dict."""
  analysis = stage.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  value = (analysis or {}).get(key)
  return None if value is None or value <= 0 else float(value)


def flops_of(stage):
  """FLOPs of one execution of ``stage`` on one device (cost_figure), or None."""
  return cost_figure(stage, 'flops')


def plain_config(config):
  """A copy of ``config`` with model.scan_layers and model.remat off.

  XLA's cost analysis counts the body of a loop once, so a scanned model's FLOPs come out
  several times too small; and remat's recomputation is not model work. FLOPs (and so MFU)
  are therefore counted on the plain program, which computes the same function (with the
  model's ``one_block_attention`` too, for the attention's loop over query chunks).
  """
  plain = config.copy_and_resolve_references()
  plain.model.scan_layers = plain.model.remat = False
  return plain


def compiled_memory(compiled, prefix: str = 'train_') -> dict:
  """Bytes one device needs to run ``compiled`` (XLA's memory analysis): arguments + outputs +
  temporaries - outputs that reuse donated argument buffers; as {prefix}memory_bytes and
  its parts, {prefix}memory_argument_bytes and so on."""
  stats = compiled.memory_analysis()
  parts = {'argument': stats.argument_size_in_bytes, 'output': stats.output_size_in_bytes,
           'temp': stats.temp_size_in_bytes, 'alias': stats.alias_size_in_bytes}
  figures = {f'{prefix}memory_{name}_bytes': int(value) for name, value in parts.items()}
  figures[f'{prefix}memory_bytes'] = int(
      parts['argument'] + parts['output'] + parts['temp'] - parts['alias'])
  return figures


def peak_memory_bytes():
  """The most device memory in use so far, over the local devices, or None where the runtime
  keeps no count (CPU)."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except  (unimplemented on some backends)
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def seconds_per_call(fn, repeats: int) -> float:
  """Mean wall time of fn() over ``repeats`` calls, after one untimed warm-up call (compiles,
  allocates). Waits for the devices only at the end: dispatch is asynchronous, and calls
  overlap with the host as they do in the trainer."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / repeats


def train_step_seconds(compiled, p_state, batch: int, model_cfg, repeats: int):
  """(seconds per train step, the state after them) for the global ``batch``, fed as the
  trainer feeds it: host arrays split over the local devices."""
  images = parallel.shard(random_images(batch, model_cfg, _BATCH_SEED))
  positions = parallel.shard(np.arange(batch, dtype=np.int32))
  state = [p_state]

  def step():
    state[0], metrics = compiled(state[0], images, positions)  # the old state is donated
    return state[0], metrics

  return seconds_per_call(step, repeats), state[0]


def eval_images_per_s(exp, p_params, batches: int) -> float:
  """Images/s of the periodic evaluator (single-sample ELBO) over ``batches`` global batches of
  config.eval.batch_size, host input pipeline included; compiled by an untimed batch first."""
  evaluator = evaluate.make_evaluator(exp, num_samples=1)
  batch = exp.config.eval.batch_size
  evaluator(p_params, batch)
  start = time.perf_counter()
  result = evaluator(p_params, batch * batches)  # returns host floats: the devices are done
  return result['num_examples'] / (time.perf_counter() - start)


def sampling_seconds(exp, p_params, n: int, repeats: int) -> float:
  """Seconds to draw n images with the trainer's sampler (host images out), ``p_params``
  replicated over the local devices."""
  draw = sampling.make_sampler(exp.model, n)
  return seconds_per_call(
      lambda: draw(p_params, exp.config.seed, exp.config.sample.temperature), repeats)


def max_reconstruction_error(model, params, y) -> float:
  """max |y - f^-1(f(y))|: see model.inversion_errors."""
  return float(jax.jit(functools.partial(model_lib.inversion_errors, model))(params, y)[0])


def forward_keys(seed: int, n: int):
  """The per-example keys the evaluator gives the first n test images."""
  return steps.example_keys(seed, steps.EVAL_TAG, jnp.arange(n))


def train_args(exp, abstract_state, count=None, per=None):
  """Abstract (state, images, positions) of the pmapped train step, from shapes alone: over
  ``count`` devices (default: the local ones), ``per`` images each (default: the config's
  batch split over them)."""
  devices, config = count or jax.local_device_count(), exp.config
  per = per or config.batch_size // devices
  return (per_device(abstract_state, devices),
          jax.ShapeDtypeStruct((devices, per, *config.model.image_shape), jnp.uint8),
          jax.ShapeDtypeStruct((devices, per), jnp.int32))


def forward_args(exp, abstract_state, n: int):
  """Abstract (params, images, keys) of make_forward on n examples split over the local
  devices (the last device's share padded up to the others')."""
  config, per = exp.config, parallel.examples_per_device(n)
  keys = jax.eval_shape(functools.partial(forward_keys, config.seed, per))
  return (per_device(abstract_state.params),
          per_device(jax.ShapeDtypeStruct((per, *config.model.image_shape), jnp.uint8)),
          per_device(keys))


def compile_figures(exp, sample_num: int):
  """Compiles the train step and a forward pass on ``sample_num`` images, from shapes alone.

  Returns (figures, compiled train step, compiled forward pass).
  """
  config = exp.config
  devices = jax.local_device_count()
  cli.say(f'compiling the train step (global batch {config.batch_size} on {devices} device(s))')
  abstract_state = exp.abstract_state()  # traced, never allocated
  p_train, lower_s, compile_s = compile_timed(loop.make_train_step(exp),
                                              *train_args(exp, abstract_state))
  figures = {'train_lower_s': lower_s, 'train_compile_s': compile_s}
  figures.update(compiled_memory(p_train))
  cli.say(f'compiling a forward pass on {sample_num} images')
  forward, _, _ = compile_timed(make_forward(exp.model),
                                *forward_args(exp, abstract_state, sample_num))
  cli.say('counting FLOPs on the model without loops (lowered, not compiled)')
  flops_exp = SyntheticExperiment(plain_config(config), num_test=0)
  # The same function with the attention in one block (no query loop on the CPU).
  flops_exp.model = flops_exp.model.clone(one_block_attention=True)
  try:
    flops_state = flops_exp.abstract_state()
    train_flops = flops_of(loop.make_train_step(flops_exp).lower(
        *train_args(flops_exp, flops_state)))
    forward_flops = flops_of(make_forward(flops_exp.model).lower(
        *forward_args(flops_exp, flops_state, sample_num)))
  finally:
    flops_exp.close()
  figures['train_flops_per_image'] = (
      None if train_flops is None else train_flops / (config.batch_size // devices))
  figures['forward_flops_per_image'] = (
      None if forward_flops is None else forward_flops / parallel.examples_per_device(sample_num))
  return figures, p_train, forward


def run_figures(exp, p_train, forward, repeats: int, sample_num: int) -> dict:
  """Initialises, then times training, evaluation, the forward pass and sampling, and checks
  the main flow's inverse. Returns the figures."""
  config = exp.config
  cli.say(f'data-dependent init on {config.init_batch_size} random images')
  state = exp.init_state()  # host arrays; the replicas below are donated to the train steps
  # The runtime keeps one peak per process: the init's, if larger, hides the train step's.
  figures = {'init_peak_memory_bytes': peak_memory_bytes()}
  cli.say(f'timing {repeats} train steps')
  step_s, p_state = train_step_seconds(p_train, parallel.replicate(state), config.batch_size,
                                       config.model, repeats)
  figures.update(train_step_s=step_s, train_images_per_s=config.batch_size / step_s,
                 peak_memory_bytes=peak_memory_bytes())
  cli.say(f'timing the evaluator on {repeats} batches of {config.eval.batch_size}')
  figures['eval_images_per_s'] = eval_images_per_s(exp, p_state.params, repeats)
  del p_state
  # On the devices once: host arrays would be copied over at every call, and the copy timed.
  p_params = parallel.replicate(state.params)
  images = random_images(sample_num, config.model, _ROUNDTRIP_SEED)
  cli.say(f'timing forward passes and sampling of {sample_num} images')
  split = (parallel.split_examples(images),
           parallel.split_examples(forward_keys(config.seed, sample_num)))
  figures['forward_s'] = seconds_per_call(lambda: forward(p_params, *split), repeats)
  figures['sample_s'] = sampling_seconds(exp, p_params, sample_num, repeats)
  figures['sample_to_forward_ratio'] = figures['sample_s'] / figures['forward_s']
  cli.say('inverting the main flow')
  noise = np.random.default_rng(_ROUNDTRIP_SEED).uniform(size=images.shape)
  figures['reconstruction_max_abs_error'] = max_reconstruction_error(
      exp.model, state.params, (images + noise).astype(np.float32))
  return figures


def utilisation_figures(figures: dict, device_kind: str, compute_dtype: str) -> dict:
  """Achieved FLOP/s, the device's peak and MFU, from the measured figures; None where the
  FLOPs, the step time or the device's peak is unknown."""
  out = {'peak_flops_per_s_per_device': accelerators.peak_flops(device_kind, compute_dtype)}
  if 'train_step_s' in figures:
    flops = figures['train_flops_per_image']
    achieved = None if flops is None else flops * figures['train_images_per_s']
    out['train_flops_per_s'] = achieved
    out['mfu'] = None if achieved is None else accelerators.mfu(
        achieved, device_kind, compute_dtype, jax.device_count())
  return out


def context(config, argv, target=None) -> dict:
  """What the figures were measured on and with; ``target``: preflight.context's figures of
  the TPU slice or GPU machine compiled for, instead of the local devices."""
  devices = jax.devices()
  where = target or {'device_kind': devices[0].device_kind, 'device_count': len(devices),
                     'platform': devices[0].platform}
  return {
      **cli.config_arguments(argv), **where, 'jax_version': jax.__version__,
      'batch_size': config.batch_size,
      'per_device_batch': config.batch_size // where['device_count'],
      'eval_batch_size': config.eval.batch_size, 'sample_num': _SAMPLE_NUM.value,
      'steps': _STEPS.value, 'compute_dtype': config.model.compute_dtype,
      'compile_only': _COMPILE_ONLY.value,
      # Which published peak MFU divides by (None: the device is not in the table).
      'peak_basis': accelerators.basis(where['device_kind'], config.model.compute_dtype),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      # glibc.malloc.hugetlb=1 unless opted out: see host_memory.
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'compilation_cache': bool(jax.config.jax_compilation_cache_dir
                                and jax.config.jax_enable_compilation_cache),
  }


def _shown(value, scale) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, bool) or scale is None:
    return 'yes' if value else 'NO'
  return f'{value * scale:.4g}'


def format_table(info: dict, figures: dict, rows_of=ROWS) -> str:
  """The human-readable table: context, then one row per figure measured."""
  devices = f'{info["device_count"]} x {info["device_kind"]}'
  if 'target' in info:
    devices += (f' ({info["target"]}: {info["chips"]} chips, {info["hosts"]} host(s), '
                f'topology {info["topology"]}, compile-only, {info["compiler"]})')
  rows = [('config', ' '.join([info['config'], *info['config_overrides']]), ''),
          ('devices', devices, ''),
          ('jax', info['jax_version'], ''),
          ('global batch (per device)', f'{info["batch_size"]} ({info["per_device_batch"]})',
           'images'),
          ('compute dtype', info['compute_dtype'], ''),
          ('attention kernel', info['attention_kernel'], ''),
          ('peak FLOP/s taken as', info['peak_basis'] or 'n/a (device not in accelerators.py)',
           '')]
  for key, what, unit, scale in rows_of:
    if key in figures:
      rows.append((what.replace('sample_num', str(info['sample_num'])),
                   _shown(figures[key], scale), unit))
  width = max(len(what) for what, _, _ in rows)
  # Numbers line up on the right; a longer context value (the config) just runs on.
  value_width = max(len(value) for _, value, unit in rows if unit)
  return '\n'.join(f'{what:<{width}}  {value:>{value_width}}  {unit}'.rstrip()
                   for what, value, unit in rows)


def main_target(config, target: str) -> None:
  """--target: the pre-flight for a Cloud TPU slice or GPU machine (preflight.py): compiles,
  prints the table and the JSON line."""
  from flowpp_jax import preflight  # pylint: disable=g-import-not-at-top
  if not _COMPILE_ONLY.value:
    cli.fail('--target compiles for accelerators without them and runs nothing: add '
             '--compile_only')
  if _MAX_BATCH_COMPILES.value < 0:
    cli.fail(f'--max_batch_compiles must be >= 0, got {_MAX_BATCH_COMPILES.value}')
  try:
    where = preflight.parse_target(target)
    preflight.check_batches(config, where)
  except ValueError as e:
    cli.fail(str(e))
  missing = where.missing_compiler()
  if missing:
    cli.fail(missing)
  where.prepare_environment()
  # Programs for other devices never load here, and a cache hit would hide the compile time.
  jax.config.update('jax_enable_compilation_cache', False)
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')  # nothing runs: no TPU runtime to look for
  try:
    exp = SyntheticExperiment(config, num_test=0, device_count=where.devices)
  except ValueError as e:
    cli.fail(f'{e}'.splitlines()[0])
  try:
    devices = where.compile_devices()
    info = context(config, sys.argv, preflight.context(where))
    info['sample_num'] = config.sample.num  # the sampler's, as the trainer runs it
    info['attention_kernel'] = f'flowpp_jax ({where.platform.upper()} choices of nn/backend.py)'
    figures = preflight.run(exp, where, devices, sample_num=config.sample.num,
                            max_batch_compiles=_MAX_BATCH_COMPILES.value, say=cli.say,
                            helpers=sys.modules[__name__])
  finally:
    exp.close()
  print(format_table(info, {**info, **figures}, TARGET_ROWS))  # the memory rows are info's
  if not figures['fits']:
    largest = figures.get('max_per_device_batch')
    batch = ('no batch fits' if largest == 0 else
             f'{largest} images per device fit: --config.batch_size={largest * where.devices}'
             if largest else 'find the largest batch that fits with --max_batch_compiles=6')
    print(f'does not fit: {figures["out_of_memory_message"]}; {batch}; or recompute '
          'activations in the backward pass with --config.model.remat=True', file=sys.stderr)
  print(json.dumps({**info, **figures}), flush=True)


def main(argv):
  cli.refuse_arguments(argv)
  interrupt.exit_on_ctrl_c('the benchmark')
  if _STEPS.value < 1 or _SAMPLE_NUM.value < 1:
    cli.fail(f'--steps and --sample_num must be >= 1, got {_STEPS.value} and {_SAMPLE_NUM.value}')
  config = cli.load_config(_CONFIG)
  if _TARGET.value is not None:
    main_target(config, _TARGET.value)
    return
  try:
    cpu_devices.use_all_cores((config.batch_size, config.eval.batch_size))
  except ValueError as e:
    cli.fail(str(e))
  if jax.process_count() > 1:
    cli.fail('the benchmark runs on one host; run it without jax.distributed')
  try:
    exp = SyntheticExperiment(config, num_test=config.eval.batch_size * _STEPS.value)
  except ValueError as e:
    cli.fail(f'{e}'.splitlines()[0])
  info = context(config, sys.argv)
  try:
    figures, p_train, forward = compile_figures(exp, _SAMPLE_NUM.value)
    # Which kernel the compiled programs run (cuDNN's where it applies and accepts them).
    info['attention_kernel'] = ('cuDNN fused' if backend.runs_cudnn_attention(p_train)
                                else 'flowpp_jax')
    if not _COMPILE_ONLY.value:
      figures.update(run_figures(exp, p_train, forward, _STEPS.value, _SAMPLE_NUM.value))
  finally:
    exp.close()
  figures.update(utilisation_figures(figures, info['device_kind'], info['compute_dtype']))
  print(format_table(info, figures))
  print(json.dumps({**info, **figures}), flush=True)


if __name__ == '__main__':
  cli.run(main, required='config')
