"""Command line:

  python -m flowpp_jax.main --config=configs/X.py --workdir=DIR [--config.F=V ...]
                            [--mode=train|eval|sample|summary]
                            [--coordinator_address=HOST:PORT --num_processes=N --process_id=I
                             | --distributed]

train: trains (resuming from DIR's latest checkpoint), then evaluates and samples.
eval: test bits/dim of DIR's latest checkpoint (EMA parameters) -> DIR/eval.json.
sample: config.sample.num images -> DIR/samples/. summary: parameter counts.
Several processes (hosts) run one job when each is started with the multi-process flags (see
flowpp_jax/distributed.py); the config's batch sizes are global, over all of their devices.
Bad input prints one `error: ...` line and exits with status 2.
"""
import os
import sys

from flowpp_jax import host_memory

if __name__ == '__main__':  # before the heavy imports, which a re-execution would repeat
  host_memory.reexec_with_huge_pages()

from absl import app, flags, logging
from ml_collections import config_flags

from flowpp_jax import cpu_devices
from flowpp_jax import distributed
from flowpp_jax import fileio
from flowpp_jax import model as model_lib
from flowpp_jax import summary

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample', 'summary'],
                          'What to run.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-process run whose settings jax.distributed detects '
    '(Cloud TPU pod slice, SLURM, Open MPI).')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process run: HOST:PORT of process 0 (default: '
    '$FLOWPP_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process run: the number of processes (default: '
    '$FLOWPP_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process run: this process, 0 .. num_processes - 1 (default: '
    '$FLOWPP_PROCESS_ID).')
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    'coordinator_timeout', distributed.DEFAULT_TIMEOUT_S, 'Multi-process run: seconds to wait '
    'for all processes to join before giving up with an error.')


def fail(message: str, status: int = 2) -> None:
  """Prints a one-line error and exits (status 2: bad input, nothing was changed)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def parse_flags(argv):
  """absl's parser, with bad flags and config overrides reported as one error line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    fail(f'unknown config field {e}: check the --config.FIELD names against the config file')
  except (flags.Error, TypeError, ValueError) as e:
    fail(f'bad command line: {e}'.replace('\n', ' '))


def _not_from_orbax(record) -> bool:
  return f'{os.sep}orbax{os.sep}' not in record.pathname


def quiet_logging() -> None:
  """Unless --verbosity is given: orbax logs every save, and tfds every missing metadata file,
  so only errors are logged, and not orbax's, which each reach the command as an exception
  that it reports in one line (a failed background save logs a traceback per thread)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
    logging.get_absl_handler().addFilter(_not_from_orbax)


def start_borrowing_command(argv, command: str, allowed=('config',)) -> None:
  """The first checks of a command that imports this module for its --config (and the flags
  in ``allowed``): quiet_logging, no positional arguments, none of main's other flags."""
  quiet_logging()
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE')
  for flag in flags.FLAGS.get_flags_for_module(sys.modules[__name__]):
    if flag.name not in allowed and flag.present:
      fail(f'--{flag.name} is a flag of flowpp_jax.main, not of {command}')


def load_config():
  """The --config file with its overrides applied; a missing or unreadable file is one
  error line."""
  try:
    config = _CONFIG.value
    config.model  # pylint: disable=pointless-statement  (a failed load raises on first use)
  except OSError as e:
    fail(str(e).splitlines()[0] + f' ({flags.FLAGS["config"].serialize()} not found?)')
  return config


def run(mode: str, config, workdir: str) -> None:
  """Runs a mode that needs a workdir; ValueError means bad input."""
  # Imported here so that summary mode and flag errors stay fast.
  import jax  # pylint: disable=g-import-not-at-top
  from flowpp_jax import experiment, interrupt, workdir_lock  # pylint: disable=g-import-not-at-top
  # Until the training loop takes SIGINT over (it saves a checkpoint first), and for eval and
  # sample, there is nothing to save: Ctrl-C ends the process at once.
  interrupt.exit_on_ctrl_c(f'--mode={mode}')
  try:
    if mode != 'train':
      return _run_in(mode, config, workdir, read_only=True)
    experiment.validate_run_config(config, jax.device_count())
    # Before the checkpoint manager opens the workdir: it tidies away unfinished saves.
    lock = workdir_lock.hold(workdir)
    try:
      _run_in(mode, config, workdir, read_only=False)
    finally:
      lock.release()
  except Exception as e:  # pylint: disable=broad-except  (orbax wraps the OSError its own way)
    if not fileio.is_disk_full(e):
      raise
    resume = (f': it resumes from the newest complete checkpoint{_newest_checkpoint(workdir)}'
              if mode == 'train' else '')
    fail(f'no space left on the disk of {workdir}; free space and run the same '
         f'command{resume}')


def _newest_checkpoint(workdir) -> str:
  """' (step N)' for the newest complete checkpoint in ``workdir``, '' where there is none."""
  from flowpp_jax import checkpointing  # pylint: disable=g-import-not-at-top
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  step = checkpoints.latest_step()
  checkpoints.close()
  return '' if step is None else f' (step {step})'


def _run_in(mode: str, config, workdir: str, *, read_only: bool) -> None:
  from flowpp_jax import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.Experiment(config, workdir, read_only=read_only)
  try:
    run_experiment(mode, exp)
  finally:
    exp.checkpoints.close()  # joins orbax's threads before any exit


def run_experiment(mode: str, exp) -> None:
  from flowpp_jax import evaluate, parallel, sampling, train  # pylint: disable=g-import-not-at-top
  config = exp.config
  if mode == 'train':
    try:
      train.train(exp)
    except train.NonFiniteError as e:
      fail(str(e), status=1)
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


def main(argv):
  quiet_logging()
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE')
  config = load_config()
  try:
    model_lib.validate_config(config.model)
    if _MODE.value == 'summary':
      summary.print_summary(config.model)
      return
    if not _WORKDIR.value:
      fail(f'--workdir is required for --mode={_MODE.value}')
    multi_process = distributed.initialize_args(
        _DISTRIBUTED.value, _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    processes = (multi_process or {}).get('num_processes', 1)
    cpu_devices.use_all_cores((config.batch_size, config.eval.batch_size), processes)
    # After the checks above, so that bad input fails at once instead of waiting for the others.
    distributed.initialize(multi_process, _COORDINATOR_TIMEOUT.value)
    run(_MODE.value, config, _WORKDIR.value)
  except ValueError as e:
    fail(f'{e}'.splitlines()[0])


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
