"""The workdir modes of ``python -m flowpp_jax.main``: train, eval and sample.

train holds the workdir's lock and turns a full disk into one error line; eval and sample
read the latest complete checkpoint (a running train may hold the workdir). Ctrl-C ends eval
and sample at once; training saves a checkpoint first (trainer/loop.py).
"""
import jax

from flowpp_jax.data import datasets
from flowpp_jax.runtime import cli, fileio, parallel
from flowpp_jax.trainer import (checkpointing, evaluate, experiment, interrupt, loop, sampling,
                                workdir_lock)


def run(mode: str, config, workdir: str) -> None:
  """Runs ``mode`` on ``workdir``; ValueError means bad input."""
  # Until the training loop takes SIGINT over there is nothing to save.
  interrupt.exit_on_ctrl_c(f'--mode={mode}')
  try:
    if mode != 'train':
      return _run_in(mode, config, workdir, read_only=True)
    experiment.validate_run_config(config, jax.device_count())
    # Before anything is written, so that bad data is one error line and an untouched workdir.
    data = datasets.open_data(config, workdir,
                              print if jax.process_index() == 0 else lambda *_: None)
    # Before the checkpoint manager opens the workdir: it tidies away unfinished saves.
    lock = workdir_lock.hold(workdir)
    if lock.unlocked:
      print(f'note: {workdir} is not locked, {lock.unlocked}: start one run per workdir')
    try:
      _run_in(mode, config, workdir, read_only=False, data=data)
    finally:
      lock.release()
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps the OSError its own way)
    if not fileio.is_disk_full(e):
      raise
    resume = (f': it resumes from the newest complete checkpoint{_newest_checkpoint(workdir)}'
              if mode == 'train' else '')
    cli.fail(f'no space left on the disk of {workdir}; free space and run the same '
             f'command{resume}')


def _newest_checkpoint(workdir) -> str:
  """' (step N)' for the newest complete checkpoint in ``workdir``, '' where there is none."""
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  step = checkpoints.latest_step()
  checkpoints.close()
  return '' if step is None else f' (step {step})'


def _run_in(mode: str, config, workdir: str, *, read_only: bool, data=None) -> None:
  exp = experiment.Experiment(config, workdir, read_only=read_only, data=data)
  try:
    _run_experiment(mode, exp)
  finally:
    exp.checkpoints.close()  # joins orbax's threads before any exit


def _run_experiment(mode: str, exp) -> None:
  config = exp.config
  if mode == 'train':
    try:
      loop.train(exp)
    except loop.NonFiniteError as e:
      cli.fail(str(e), status=1)
    return
  state = exp.restore()
  if state is None:
    raise ValueError(f'no checkpoint in {exp.checkpoints.directory}; train first '
                     '(--mode=train with the same --workdir)')
  step = int(state.step)
  if mode == 'eval':
    evaluate.evaluate_and_report(exp, parallel.replicate(state.ema_params), step)
  else:
    samples = sampling.make_sampler(exp.model, config.sample.num)(
        parallel.replicate(state.ema_params), config.seed, config.sample.temperature, step)
    path = sampling.save(exp.workdir, step, samples, exp.info.num_levels,
                         config.sample.temperature)
    if path is not None:  # process 0 saves them
      print(f'{len(samples)} samples -> {path}')
