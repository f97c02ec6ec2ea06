"""The pre-flight of ``python -m flowpp_jax.bench --target=TYPE --compile_only``: the
trainer's programs compiled for a Cloud TPU slice on any machine with libtpu, or for a GPU
machine with jax's CUDA plugin, nothing run.

For the slice or machine TYPE names (runtime/tpu_slices.py, runtime/gpu_targets.py) it
compiles, from shapes alone and with nn/backend.py's choices for its platform:
- the train step as every host of the slice runs it: one SPMD program over all the slice's
  devices (pmap over them), the global batch split over all of them, the gradient's pmean
  over the whole slice;
- the periodic evaluator's step (single-sample ELBO, eval.batch_size split the same way);
- the sampler's decoding of sample.num latents: over a host's devices on one host, on one
  device per host when there are several (as parallel.over_examples runs it).
For each: lowering and compile time and XLA's memory per device (the evaluator and sampler
only where the train step fits). For the train step also:
FLOPs per image (counted as the benchmark counts them, on the model without loops), the
bytes XLA's cost analysis says the step moves, the lower bounds on its time from the chip's
published peak FLOP/s and HBM bandwidth, whether it fits in the device's memory (the TPU
compiler refuses a program that does not; on a GPU, XLA's memory figures are held against
what JAX gives its programs), and the largest per-device batch that fits, found by
compiling.
"""
import dataclasses
import re
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax.nn import backend
from flowpp_jax.runtime import gpu_targets, tpu_slices
from flowpp_jax.trainer import evaluate, experiment, loop, sampling

# The TPU compiler's refusal of a program larger than the HBM, e.g. "RESOURCE_EXHAUSTED: Ran
# out of memory on HBM, the total memory required for HLO temporaries (18.31G) exceeds
# available HBM (15.75G)."
_OUT_OF_MEMORY = re.compile(r'RESOURCE_EXHAUSTED|[Oo]ut of memory')
_AVAILABLE = re.compile(r'available HBM \((\d+(?:\.\d+)?)([KMGT])\)')
_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


@dataclasses.dataclass
class Outcome:
  """One compile for the slice: it fits, with XLA's memory per device, or the compiler
  refused it for want of HBM (``message``: its first line)."""
  fits: bool
  memory: Optional[dict] = None  # bench.compiled_memory's figures, without a prefix
  compiled: object = None
  lower_s: float = 0.0
  compile_s: float = 0.0
  message: str = ''

  @property
  def available_bytes(self) -> Optional[float]:
    """The HBM the compiler said a program may use, where it refused one."""
    found = _AVAILABLE.search(self.message)
    return None if found is None else float(found.group(1)) * _UNITS[found.group(2)]


def parse_target(accelerator_type: str):
  """The pre-flight's target: a GPU machine ('h100-8') or a Cloud TPU slice ('v4-8');
  ValueError naming what is taken."""
  if gpu_targets.is_gpu_type(accelerator_type):
    return gpu_targets.parse(accelerator_type)
  try:
    return tpu_slices.parse(accelerator_type)
  except ValueError as e:
    raise ValueError(f'{e}; or a GPU machine: {gpu_targets.known_types()}') from None


def compile_for_slice(fn, args, compiled_memory, available: float) -> Outcome:
  """Lowers and compiles ``fn`` (pmapped or jitted for the target's devices) on abstract
  ``args``; a refusal for want of memory, or a program larger than ``available`` bytes per
  device, is an Outcome, any other error raises."""
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (jax's runtime error type varies)
    if not _OUT_OF_MEMORY.search(str(e)):
      raise
    return Outcome(False, lower_s=lowered_at - start,
                   compile_s=time.perf_counter() - lowered_at,
                   message=str(e).strip().splitlines()[0])
  compile_s = time.perf_counter() - lowered_at
  memory = compiled_memory(compiled, prefix='')
  if memory['memory_bytes'] > available:  # XLA:GPU compiles what its allocator then refuses
    return Outcome(False, lower_s=lowered_at - start, compile_s=compile_s, message=(
        f'needs {memory["memory_bytes"] / 2**30:.2f} GiB per device, more than the available '
        f'{available / 2**30:.2f} GiB'))
  return Outcome(True, memory, compiled, lowered_at - start, compile_s)


def largest_fitting(fits_at: Callable[[int], Outcome], batch: int, first: Outcome,
                    capacity: float, max_compiles: int, limit: int = 4096):
  """(largest per-device batch that fits, whether that is settled, compiles spent), from the
  compile at ``batch`` (``first``) and at most ``max_compiles`` more through ``fits_at``.

  Memory is close to linear in the batch, so a guess is where the line through the smallest
  and largest batches that fit reaches ``capacity`` bytes (the compiler's own limit, once a
  refusal has given it). Until a batch is refused: that guess; one more than the largest fit
  where the line is there already (once: if it fits, the capacity was low); else double. Then
  the guesses stay strictly between the largest batch known to fit and the smallest known not
  to, alternating with the midpoint so that a poor line cannot stall the search; a line that
  points at the largest fit asks about one more. Settled when batch+1 is known not to fit."""
  lo, hi = (batch, None) if first.fits else (0, batch)
  points = [(batch, first.memory['memory_bytes'])] if first.fits else []
  capacity = first.available_bytes or capacity
  spent = bracketed = 0  # compiles, and those since a batch was refused
  crept = False  # the last guess was one more than the largest fit, before any refusal
  while spent < max_compiles and (hi is None or hi - lo > 1) and lo < limit:
    line = _line_guess(points, capacity)
    if hi is None:  # at the line's capacity: one more image, once; past it the line is low
      guess = line if line is not None and line > lo else (
          lo + 1 if line is not None and not crept else lo * 2)
      crept = guess == lo + 1
    elif line is not None and line <= lo:
      guess = lo + 1
    elif line is not None and line < hi and bracketed % 2 == 0:
      guess = line
    else:
      guess = (lo + hi) // 2 if lo else max(hi // 2, 1)
    guess = min(max(guess, lo + 1), limit if hi is None else hi - 1)
    bracketed += hi is not None
    outcome = fits_at(guess)
    spent += 1
    if outcome.fits:
      lo = guess
      points = sorted(points + [(guess, outcome.memory['memory_bytes'])])
    else:
      hi = guess
      capacity = outcome.available_bytes or capacity
  return lo, hi is not None and hi == lo + 1, spent


def _line_guess(points, capacity: float) -> Optional[int]:
  """The batch at which the line through the first and last (batch, bytes) points reaches
  ``capacity`` bytes; None without a rising line."""
  if len(points) < 2:
    return None
  (b1, m1), (b2, m2) = points[0], points[-1]
  if m2 <= m1:
    return None
  return b2 + int((capacity - m2) * (b2 - b1) // (m2 - m1))


def _tried(batch: int, outcome: Outcome) -> dict:
  """One compile of the batch search, for the JSON line (the compiled program dropped)."""
  return {'per_device_batch': batch, 'fits': outcome.fits,
          'memory_bytes': outcome.memory['memory_bytes'] if outcome.fits else None,
          'compile_s': outcome.compile_s, 'message': outcome.message}


def eval_args(abstract_state, count: int, per: int, model_cfg, helpers):
  """Abstract (params, images, indices, mask) of the evaluator's step over ``count`` devices
  with ``per`` images each."""
  return (helpers.per_device(abstract_state.params, count),
          jax.ShapeDtypeStruct((count, per, *model_cfg.image_shape), jnp.uint8),
          jax.ShapeDtypeStruct((count, per), jnp.int32),
          jax.ShapeDtypeStruct((count, per), jnp.float32))


def check_batches(config, target) -> None:
  """ValueError naming the field when a batch does not split over the target's devices."""
  for name, value in (('batch_size', config.batch_size),
                      ('eval.batch_size', config.eval.batch_size)):
    if value % target.devices:
      raise ValueError(
          f'{name} {value} does not divide over the {target.devices} devices of '
          f'{target.accelerator_type}; set --config.{name} to a multiple of {target.devices}')


def lower_bounds(flops: Optional[float], moved: Optional[float], target) -> dict:
  """Lower bounds on one train step's time per device: its FLOPs at the chip's peak, its
  bytes at the HBM bandwidth; the larger one, and which it is."""
  compute = None if flops is None else flops / target.peak_flops_per_device
  memory = None if moved is None else moved / target.hbm_bytes_per_s_per_device
  known = {name: value for name, value in (('compute', compute), ('memory', memory))
           if value is not None}
  bound = max(known, key=known.get) if known else None
  return {'train_step_compute_bound_s': compute, 'train_step_memory_bound_s': memory,
          'train_step_lower_bound_s': known.get(bound), 'train_step_bound': bound}


def run(exp, target, devices, *, sample_num: int, max_batch_compiles: int, say,
        helpers) -> dict:
  """The pre-flight's figures for ``exp`` (built for ``target``'s device count) on its
  compile-only ``devices``. ``helpers``: the benchmark module (its FLOPs count, memory
  figures and plain config), whose table and JSON print the result."""
  config, count = exp.config, target.devices
  per = config.batch_size // count
  with backend.lowering_for(target.platform):
    abstract_state = exp.abstract_state()
    p_train = loop.make_train_step(exp, devices=devices)
    compile_train = lambda b: compile_for_slice(
        p_train, helpers.train_args(exp, abstract_state, count, b), helpers.compiled_memory,
        target.available_memory_bytes)
    say(f'compiling the train step for {target.accelerator_type} ({count} devices, '
        f'{target.hosts} host(s)), {per} images per device')
    train = compile_train(per)
    figures = {'train_lower_s': train.lower_s, 'train_compile_s': train.compile_s,
               'fits': train.fits, 'train_memory_bytes': None}
    if train.fits:
      figures.update({f'train_{name}': value for name, value in train.memory.items()})
      figures['train_bytes_accessed'] = helpers.cost_figure(train.compiled, 'bytes accessed')
    else:
      figures['out_of_memory_message'] = train.message
    say('counting FLOPs on the model without loops (lowered, not compiled)')
    figures['train_flops_per_image'] = _train_flops_per_image(exp, count, helpers)
    figures.update(_bounds(figures, per, target))
    if train.fits:  # else the config changes first: minutes of compiles saved
      figures.update(_eval_figures(exp, abstract_state, target, devices, helpers, say))
      figures.update(_sample_figures(exp, abstract_state, target, devices, sample_num,
                                     helpers, say))
    if max_batch_compiles > 0:
      tried = [_tried(per, train)]

      def fits_at(b):
        say(f'compiling the train step at {b} images per device')
        outcome = compile_train(b)
        outcome.compiled = None  # only its figures are kept
        tried.append(_tried(b, outcome))
        say(f'{b} images per device: ' + ('fits' if outcome.fits else 'does not fit'))
        return outcome
      largest, settled, _ = largest_fitting(
          fits_at, per, train, target.available_memory_bytes, max_batch_compiles)
      figures.update(max_per_device_batch=largest, max_per_device_batch_settled=settled,
                     batch_search=tried)
  return figures


def _train_flops_per_image(exp, count: int, helpers) -> Optional[float]:
  """FLOPs per image of the train step, counted as the benchmark counts them (on the plain
  model, bench.plain_config, with one-block attention), with the target's choices of
  nn/backend.py, on a program lowered for one local device: XLA gives no cost analysis of a
  program lowered for a TPU before it is compiled, and the compiled one counts a loop body
  once."""
  flops_exp = helpers.SyntheticExperiment(helpers.plain_config(exp.config), num_test=0,
                                          device_count=count)
  flops_exp.model = flops_exp.model.clone(one_block_attention=True)
  try:
    per = exp.config.batch_size // count
    lowered = loop.make_train_step(flops_exp, devices=jax.local_devices()[:1]).lower(
        *helpers.train_args(flops_exp, flops_exp.abstract_state(), 1, per))
    flops = helpers.flops_of(lowered)
  finally:
    flops_exp.close()
  return None if flops is None else flops / per


def _bounds(figures: dict, per: int, target) -> dict:
  flops = figures['train_flops_per_image']
  moved = figures.get('train_bytes_accessed')
  return {'train_flops_per_device': None if flops is None else flops * per,
          **lower_bounds(None if flops is None else flops * per, moved, target)}


def _eval_figures(exp, abstract_state, target, devices, helpers, say) -> dict:
  count = target.devices
  per = exp.config.eval.batch_size // count
  say(f'compiling the periodic evaluator, {per} images per device')
  outcome = compile_for_slice(evaluate.eval_program(exp, 1, devices=devices),
                              eval_args(abstract_state, count, per, exp.config.model, helpers),
                              helpers.compiled_memory, target.available_memory_bytes)
  return {'eval_lower_s': outcome.lower_s, 'eval_compile_s': outcome.compile_s,
          'eval_fits': outcome.fits,
          'eval_memory_bytes': outcome.memory['memory_bytes'] if outcome.fits else None}


def _sample_figures(exp, abstract_state, target, devices, n: int, helpers, say) -> dict:
  """The sampler's decoding of n latents: over host 0's devices on one host, all n on one
  device where there are several hosts (parallel.over_examples)."""
  model = exp.model
  local = [d for d in devices if d.process_index == devices[0].process_index]
  if target.hosts == 1:
    per = -(-n // len(local))
    fn = jax.pmap(sampling.decode_fn(model), devices=local)
    stack = lambda tree: helpers.per_device(tree, len(local))
  else:
    per = n
    fn = jax.jit(sampling.decode_fn(model))
    on_one = jax.sharding.SingleDeviceSharding(local[0])
    stack = lambda tree: jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_one), tree)
  latents = jax.eval_shape(sampling.latents_fn(model, per), jax.random.PRNGKey(0), 1.0)
  say(f'compiling the sampler, {per} latents per device')
  outcome = compile_for_slice(fn, (stack(abstract_state.params), stack(latents)),
                              helpers.compiled_memory, target.available_memory_bytes)
  return {'sample_lower_s': outcome.lower_s, 'sample_compile_s': outcome.compile_s,
          'sample_fits': outcome.fits, 'sample_per_device': per,
          'sample_memory_bytes': outcome.memory['memory_bytes'] if outcome.fits else None}


def context(target) -> dict:
  """What the slice or machine is, for the table and the JSON line."""
  return {'target': target.accelerator_type, 'topology': target.topology,
          'chips': target.chips, 'hosts': target.hosts, 'device_count': target.devices,
          'device_kind': target.device_kind, 'platform': target.platform,
          'device_memory_bytes': target.device_memory_bytes,
          'available_memory_bytes': target.available_memory_bytes,
          'peak_flops_per_s_per_device': target.peak_flops_per_device,
          'hbm_bytes_per_s_per_device': target.hbm_bytes_per_s_per_device,
          'compiler': target.compiler()}
