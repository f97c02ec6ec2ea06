"""``--mode=train``: the training loop.

Starts from the latest checkpoint in the workdir when there is one, otherwise from a
data-dependent init. Data order and randomness are functions of (seed, step, example
position), so a run killed at any moment and started again with the same command ends with the
same parameters and metrics as an uninterrupted one. SIGTERM and Ctrl-C save a checkpoint, then
exit (143, 130); a second Ctrl-C exits at once. With several processes, all of them stop after
the same step.
"""
import functools
import signal
import sys
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from flowpp_jax.data import images as images_lib
from flowpp_jax.data import input_pipeline
from flowpp_jax.runtime import fileio, parallel
from flowpp_jax.trainer import evaluate, interrupt, reporting, sampling, steps

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class NonFiniteError(RuntimeError):
  """Too many non-finite losses in a row: training diverged."""


class _StopRequest:
  """Remembers a SIGTERM (a preemption) or a Ctrl-C (SIGINT) so the loop can save a checkpoint
  before exiting; a second Ctrl-C exits at once, leaving the finished checkpoints as they are
  (orbax writes each one to a temporary folder and renames it when complete).

  With several processes the decision is collective: a signal may reach only some of them, or
  reach them at different steps, yet all must save the same step (orbax saves collectively)
  and exit together. So each step every process adds its flag to a count over all devices and
  reads the previous step's count, which it waits for anyway (the loop checks the previous
  step's metrics): all of them stop after the same step, one step after the first signal.
  A single process decides alone, at once.
  """

  def __init__(self, checkpoint_dir):
    self.requested = False
    self.signal = None  # the first signal received, if any
    self._checkpoint_dir = checkpoint_dir
    self._count = None  # the pending count of the previous step
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      interrupt.exit_now(f'second Ctrl-C: stopped without saving; the checkpoints in '
                         f'{self._checkpoint_dir} are intact')
    self.requested = True
    self.signal = self.signal or signum

  @property
  def exit_code(self) -> int:
    """130 after a Ctrl-C, 143 after a SIGTERM (or when another process decided)."""
    if self.signal == signal.SIGINT:
      return interrupt.INTERRUPTED_EXIT_CODE
    return PREEMPTED_EXIT_CODE

  def stop(self) -> bool:
    """Whether to save and exit after the step just dispatched. Every process calls it once
    per step; it answers the same on all of them."""
    if jax.process_count() == 1:
      return self.requested
    count, self._count = self._count, parallel.count_processes(self.requested)
    return count is not None and int(parallel.unreplicate(count)) > 0

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _start(exp, say):
  """The state to start from: the latest checkpoint, or a fresh data-dependent init."""
  state = exp.restore()
  if state is not None:
    say(f'resuming from {exp.checkpoints.directory}/{int(state.step)}')
    return state
  say(f'data-dependent init on {exp.config.init_batch_size} training images')
  start = time.perf_counter()
  # Every process computes the same init; all take process 0's so that the replicas start
  # identical even on a backend whose reductions are not bit-deterministic.
  state = multihost_utils.broadcast_one_to_all(exp.init_state())
  say(f'init done in {time.perf_counter() - start:.1f} s')
  return state


class _Profiler:
  """Traces ``steps`` train steps with jax.profiler into WORKDIR/tensorboard (TensorBoard's
  Profile tab), from the end of the first step, so that the compile is not in it."""

  def __init__(self, workdir, steps: int, say):
    self._dir = str(fileio.path(workdir) / 'tensorboard')
    self._steps, self._say = steps, say
    self._until = None  # the step that ends the trace, while tracing

  def after_first_step(self, step: int) -> None:
    if self._steps:
      jax.profiler.start_trace(self._dir)
      self._until = step + self._steps
      self._say(f'profiling steps {step + 1}..{self._until} into {self._dir}')

  def after_step(self, step: int, outputs) -> None:
    if self._until is not None and step >= self._until:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self) -> None:
    if self._until is not None:
      self._until = None
      jax.profiler.stop_trace()
      self._say(f'profile written to {self._dir} (tensorboard --logdir {self._dir}, Profile '
                'tab)')


def make_train_step(exp, devices=None):
  """The train step, pmapped over ``devices`` (default: the local devices): (state, images
  [D, b, H, W, C] uint8, positions [D, b] int32) -> (state, metrics). The state is donated."""
  config = exp.config
  return jax.pmap(
      functools.partial(steps.train_step, model=exp.model, direction=exp.direction,
                        schedule=exp.schedule, ema_decay=config.optimizer.ema_decay,
                        seed=config.seed),
      axis_name=steps.AXIS, donate_argnums=(0,), devices=devices)


def train(exp) -> steps.TrainState:
  """Trains to config.num_train_steps, then evaluates and samples. Returns the final state
  (host arrays)."""
  config = exp.config
  train_source, test_source = exp.source('train'), exp.source('test')  # fail early if missing
  say = print if jax.process_index() == 0 else lambda *_: None
  state = _start(exp, say)
  exp.write_config()
  start_step = int(state.step)
  reporter = reporting.Reporter(exp.workdir, total_steps=config.num_train_steps,
                                resume_step=start_step)
  p_train = make_train_step(exp)
  periodic_eval = evaluate.make_evaluator(exp, num_samples=1)
  periodic_examples = min(config.eval.train_num_examples, len(test_source))
  sampler = sampling.make_sampler(exp.model, config.sample.num)
  batches = input_pipeline.TrainBatches(train_source, config.batch_size, config.seed,
                                        jax.process_index(), jax.process_count())
  p_state = parallel.replicate(state)
  preemption = _StopRequest(exp.checkpoints.directory)
  profiler = _Profiler(exp.workdir, config.get('profile_steps', 0), reporter.say)
  processes = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
  reporter.say(f'training steps {start_step}..{config.num_train_steps} on '
               f'{jax.device_count()} {jax.devices()[0].platform} device(s){processes}, '
               f'global batch {config.batch_size}; workdir {exp.workdir}')
  previous_metrics = None
  first_step_start = time.perf_counter()
  try:
    for step, images, positions in batches.iterate(start_step):
      if step >= config.num_train_steps:
        break
      p_state, metrics = p_train(p_state, parallel.shard(images),
                                 parallel.shard(positions.astype(np.int32)))
      done = step + 1
      if done == start_step + 1:
        jax.block_until_ready(metrics)
        reporter.say(f'first step (compile + run): {time.perf_counter() - first_step_start:.1f} s')
        reporter.start_clock(done)  # throughput and ETA exclude compilation
        profiler.after_first_step(done)
      profiler.after_step(done, metrics)
      # Checked one step late so that the host does not wait for the step just dispatched.
      if previous_metrics is not None:
        _check_finite(previous_metrics, config.optimizer.max_nonfinite_in_row, done - 1)
      previous_metrics = metrics
      if done % config.log_every_steps == 0 or done == config.num_train_steps:
        _log(reporter, done, metrics, config)
      if done % config.eval_every_steps == 0 or done == config.num_train_steps:
        result = periodic_eval(p_state.ema_params, periodic_examples)
        reporter.write(done, {'eval_bpd': result['bpd']})
        reporter.say(f'step {done}: eval {result["bpd"]:.4f} bits/dim (EMA, ELBO, '
                     f'{result["num_examples"]} {exp.data.eval_split} images)')
        reporter.rates(done, 0)  # evaluation time is not training throughput
      # (the final step's samples are drawn after the loop)
      if (config.sample_every_steps and done % config.sample_every_steps == 0
          and done < config.num_train_steps):
        _sample(exp, sampler, p_state.ema_params, done, reporter)
        reporter.rates(done, 0)
      stop = preemption.stop()
      if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps or stop:
        exp.save(parallel.unreplicate(p_state))
      if stop:
        exp.checkpoints.wait()
        cause = 'Ctrl-C' if preemption.signal == signal.SIGINT else 'SIGTERM'
        reporter.say(f'{cause}: saved the checkpoint of step {done} in '
                     f'{exp.checkpoints.directory}; run the same command to resume')
        reporter.close()
        sys.exit(preemption.exit_code)
    if previous_metrics is not None:
      _check_finite(previous_metrics, config.optimizer.max_nonfinite_in_row,
                    config.num_train_steps)
  finally:
    profiler.stop()
    preemption.restore()
    exp.checkpoints.wait()
  state = parallel.unreplicate(p_state)
  step = int(state.step)
  evaluate.evaluate_and_report(exp, p_state.ema_params, step)
  _sample(exp, sampler, p_state.ema_params, step, reporter)
  reporter.close()
  return state


def _check_finite(metrics, limit: int, step: int) -> None:
  in_row = int(parallel.unreplicate(metrics['nonfinite_in_row']))
  if in_row >= limit:
    raise NonFiniteError(
        f'{in_row} non-finite losses in a row up to step {step} (updates were skipped, so the '
        f'parameters are finite); lower --config.lr.peak or raise '
        f'--config.optimizer.max_nonfinite_in_row, and resume from the last checkpoint')


def _log(reporter, step: int, metrics, config) -> None:
  values = parallel.unreplicate(metrics)
  row = {'train_bpd': values['train_bpd'], 'lr': values['lr'],
         'grad_norm': values['grad_norm'], 'nonfinite_total': values['nonfinite_total'],
         **reporter.rates(step, config.batch_size)}
  reporter.write(step, row)
  reporter.say(f'step {step}/{config.num_train_steps}  train {row["train_bpd"]:.4f} bits/dim  '
               f'lr {row["lr"]:.2e}  |g| {row["grad_norm"]:.3f}  '
               f'{row["steps_per_s"]:.2f} steps/s  ETA {reporter.eta(step)}')


def _sample(exp, sampler, p_ema_params, step: int, reporter) -> None:
  config = exp.config
  samples = sampler(p_ema_params, config.seed, config.sample.temperature, step)
  path = sampling.save(exp.workdir, step, samples, exp.info.num_levels,
                       config.sample.temperature)
  reporter.image(f'samples/temperature_{config.sample.temperature:g}', step,
                 images_lib.sample_grid(samples, exp.info.num_levels))
  reporter.say(f'step {step}: {len(samples)} samples at temperature '
               f'{config.sample.temperature:g} -> {path}')
