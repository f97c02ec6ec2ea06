"""Command line:

  python -m flowpp_jax.main --config=configs/X.py --workdir=DIR [--config.F=V ...]
                            [--mode=train|eval|sample|summary]
                            [--coordinator_address=HOST:PORT --num_processes=N --process_id=I
                             | --distributed] [--coordinator_timeout=S]

train: trains (resuming from DIR's latest checkpoint), then evaluates and samples.
eval: test bits/dim of DIR's latest checkpoint (EMA parameters) -> DIR/eval.json.
sample: config.sample.num images -> DIR/samples/. summary: parameter counts.
The multi-process flags: flowpp_jax/runtime/distributed.py. The modes: flowpp_jax/trainer/.
Bad input prints one `error: ...` line and exits with status 2.
"""
if __name__ == '__main__':  # before the heavy imports, which a re-execution would repeat
  from flowpp_jax.runtime import host_memory
  host_memory.reexec_with_huge_pages()

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from flowpp_jax import model as model_lib
from flowpp_jax.runtime import cli, cpu_devices, distributed

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()
  flags.adopt_module_key_flags(cli)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, samples.')
  _MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample', 'summary'],
                            'What to run.')
  _DISTRIBUTED = flags.DEFINE_bool(
      'distributed', False, 'Join a multi-process run whose settings jax.distributed detects '
      '(Cloud TPU pod slice, SLURM, Open MPI).')
  _MULTI_PROCESS_HELP = {'coordinator_address': 'HOST:PORT of process 0',
                         'num_processes': 'the number of processes',
                         'process_id': 'this process, 0 .. num_processes - 1'}
  _MULTI_PROCESS = {
      name: (flags.DEFINE_string if name == 'coordinator_address' else flags.DEFINE_integer)(
          name, None, f'Multi-process run: {text} (default: ${distributed.ENV_VARS[name]}).')
      for name, text in _MULTI_PROCESS_HELP.items()}
  _COORDINATOR_TIMEOUT = flags.DEFINE_integer(
      'coordinator_timeout', distributed.DEFAULT_TIMEOUT_S, 'Multi-process run: seconds to wait '
      'for all processes to join before giving up with an error.')


def main(argv):
  cli.refuse_arguments(argv)
  config = cli.load_config(_CONFIG)
  try:
    model_lib.FlowPlusPlus(config.model)  # checks the model config before anything starts
    if _MODE.value == 'summary':
      from flowpp_jax.trainer import summary  # pylint: disable=g-import-not-at-top
      summary.print_summary(config.model)
      return
    if not _WORKDIR.value:
      cli.fail(f'--workdir is required for --mode={_MODE.value}')
    multi_process = distributed.initialize_args(
        _DISTRIBUTED.value, **{name: flag.value for name, flag in _MULTI_PROCESS.items()})
    processes = (multi_process or {}).get('num_processes', 1)
    cpu_devices.use_all_cores((config.batch_size, config.eval.batch_size), processes)
    # After the checks above, so that bad input fails at once instead of waiting for the others.
    distributed.initialize(multi_process, _COORDINATOR_TIMEOUT.value)
    # Imported here so that summary mode and flag errors stay fast.
    from flowpp_jax.trainer import modes  # pylint: disable=g-import-not-at-top
    modes.run(_MODE.value, config, _WORKDIR.value)
  except ValueError as e:
    cli.fail(f'{e}'.splitlines()[0])


if __name__ == '__main__':
  cli.run(main, required='config')
