"""Command line: the authors' trained Flow++ weights as a flowpp_jax workdir, and back.

  python -m flowpp_jax.import_weights --config=configs/cifar10.py --weights=PATH --workdir=DIR
                                      [--config.FIELD=VALUE ...]
  python -m flowpp_jax.import_weights --workdir=DIR --export=OUT.npz [--export_layout=...]

PATH: an .npz of the official variable names as the authors released them, or a checkpoint of
the official trainer (its prefix or folder; reading it needs TensorFlow:
pip install -e '.[prepare]'). DIR becomes an ordinary workdir; ``--export`` writes DIR's latest
EMA parameters back under the official names, keyed as the authors' loader for the
architecture reads them. What is read and written: flowpp_jax/official/weights.py. Bad input
prints one ``error: ...`` line, exits with status 2 and writes nothing.
"""
if __name__ == '__main__':
  import os
  # Before anything imports TensorFlow (etils.epath does where it is installed): its start-up
  # log lines are not this command's output, and its oneDNN kernels (which announce
  # themselves) do nothing for reading a checkpoint.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from flowpp_jax.official.weights import (EMA_SUFFIX, LAYOUT_AVERAGES, LAYOUT_PLAIN, RECORD_FILE,
                                         export_weights, import_weights)
from flowpp_jax.runtime import cli
from flowpp_jax.trainer import experiment

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()
  flags.adopt_module_key_flags(cli)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir to write (import), or to read '
                                 '(--export).')
  _WEIGHTS = flags.DEFINE_string('weights', None, 'The official weights: an .npz of official '
                                 'variable names, or a TensorFlow checkpoint prefix or folder.')
  _EXPORT = flags.DEFINE_string('export', None, 'Write the latest EMA parameters of --workdir to '
                                'this .npz of official variable names instead of importing.')
  _EXPORT_LAYOUT = flags.DEFINE_enum(
      'export_layout', 'authors', ['authors', LAYOUT_PLAIN, LAYOUT_AVERAGES],
      "How --export keys the variables: 'plain' by their official names (what the authors' "
      "CIFAR-10 loader reads), 'averages' as NAME/ExponentialMovingAverage (what their ImageNet "
      "32 and 64 loaders read), 'authors' the one their loader for the architecture reads.")


def main(argv):
  cli.refuse_arguments(argv)
  workdir = _WORKDIR.value
  if not workdir:
    cli.fail('--workdir is required')
  try:
    if _EXPORT.value:
      if _WEIGHTS.value or flags.FLAGS['config'].present:
        cli.fail('--export reads the config and weights of --workdir; drop --config and --weights')
      count, layout = export_weights(workdir, _EXPORT.value, _EXPORT_LAYOUT.value)
      keyed = ('NAME' + EMA_SUFFIX if layout == LAYOUT_AVERAGES else 'their official names')
      print(f'{count} variables (EMA parameters of {workdir}) -> {_EXPORT.value}, keyed by '
            f'{keyed}')
      return
    if not _WEIGHTS.value or not flags.FLAGS['config'].present:
      cli.fail('importing needs --config, --weights and --workdir (or --export=OUT.npz to export)')
    config = cli.load_config(_CONFIG)
    config_flag = flags.FLAGS['config'].serialize().partition('=')[2]
    record = import_weights(config, _WEIGHTS.value, workdir, config_name=config_flag)
  except ValueError as e:
    cli.fail(str(e).splitlines()[0])
  except OSError as e:
    cli.fail(f'{e.filename or workdir}: {e.strerror or e}')
  print(f'read {record["variables"]} variables ({record["parameters"]:,} parameters) from '
        f'{record["path"]} ({record["format"]})')
  if record['layout'] == LAYOUT_AVERAGES:
    print(f'parameters and EMA from the {EMA_SUFFIX[1:]} values; the file has no raw values; '
          f'Adam from {record["adam_from"]}')
  else:
    print(f'parameters from {record["params_from"]}; EMA from {record["ema_from"]}; Adam from '
          f'{record["adam_from"]}')
  print(f'wrote {workdir}: checkpoint of step {record["step"]}, {experiment.CONFIG_FILE}, '
        f'{RECORD_FILE}')
  print(f'next (with the same --config overrides): python -m flowpp_jax.main '
        f'--config={config_flag} --workdir={workdir} --mode=eval')


if __name__ == '__main__':
  cli.run(main, required=None)
