"""Command line: python -m flowpp_jax.main --config=configs/X.py [--mode=...] [--config.F=V].

Modes: summary (parameter counts; allocates nothing).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from flowpp_jax import model as model_lib
from flowpp_jax import summary

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_MODE = flags.DEFINE_enum('mode', 'summary', ['summary'], 'What to run.')


def fail(message: str) -> None:
  """Prints a one-line error and exits with status 2 (bad input, nothing was changed)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's parser, with bad flags and config overrides reported as one error line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    fail(f'unknown config field {e}: check the --config.FIELD names against the config file')
  except (flags.Error, TypeError, ValueError) as e:
    fail(f'bad command line: {e}'.replace('\n', ' '))


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings go in --config.FIELD=VALUE')
  try:
    config = _CONFIG.value
    model_lib.validate_config(config.model)
  except OSError as e:
    fail(str(e).splitlines()[0] + f' ({flags.FLAGS["config"].serialize()} not found?)')
  except ValueError as e:
    fail(f'{e} (fix the config file or its --config override)')
  if _MODE.value == 'summary':
    summary.print_summary(config.model)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
