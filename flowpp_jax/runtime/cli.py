"""What every command line shares: the --config flag and its loading, one-line errors, flag
parsing that reports bad flags that way, progress lines, and a console free of the libraries'
own reports (console.py). Only the commands (flowpp_jax/*.py, flowpp_jax/tools/*.py) use it;
none of them imports another."""
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from flowpp_jax.runtime import console

_START = time.perf_counter()


def define_config() -> flags.FlagHolder:
  """Defines --config, a config file whose fields --config.FIELD=VALUE override. A command
  calls it where it defines its own flags, under ``if __name__ == '__main__'`` (absl's flags
  are process-wide: commands imported side by side would define theirs twice), and then
  ``flags.adopt_module_key_flags(cli)``, so that its --help lists it."""
  return config_flags.DEFINE_config_file(
      'config', None, 'A config file (configs/*.py; FILE:ARG passes ARG to its get_config); '
      'override its fields with --config.FIELD=VALUE.', lock_config=True)


def load_config(holder: flags.FlagHolder):
  """The --config file with its overrides applied; a missing or unreadable file is one error
  line."""
  try:
    config = holder.value
    config.model  # pylint: disable=pointless-statement  (a failed load raises on first use)
  except OSError as e:
    fail(str(e).splitlines()[0] + f' ({flags.FLAGS["config"].serialize()} not found?)')
  return config


def config_arguments(argv) -> dict:
  """The --config file and its --config.FIELD overrides, as given on the command line."""
  return {'config': flags.FLAGS['config'].serialize().split('=', 1)[-1],
          'config_overrides': [a for a in argv[1:] if a.startswith('--config.')]}


def say(message: str) -> None:
  """A progress line on stderr (stdout holds a command's results), with the seconds since
  the command started."""
  print(f'[{time.perf_counter() - _START:6.1f} s] {message}', file=sys.stderr, flush=True)


def fail(message: str, status: int = 2) -> None:
  """Prints a one-line error and exits (status 2: bad input, nothing was changed)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv):
  """absl's parser, with bad flags and config overrides reported as one error line."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    fail(f'unknown config field {e}: check the --config.FIELD names against the config file')
  except (flags.Error, TypeError, ValueError) as e:
    fail(f'bad command line: {e}'.replace('\n', ' '))


def run(main, required: str | None) -> None:
  """Runs ``main(argv)`` as a command whose flag ``required`` (if any) must be given: the
  command's entry point, which alone changes the process's logging and hooks (console.py)."""
  if required:
    flags.mark_flag_as_required(required)

  def command(argv):
    console.quiet_libraries(verbose=flags.FLAGS['verbosity'].present)
    return main(argv)
  try:
    app.run(command, flags_parser=parse_flags)
  except SystemExit as e:
    if e.code:  # an error line was printed: nothing may follow it
      console.silence_after_error()
    raise


def refuse_arguments(argv) -> None:
  """Commands take flags only."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings are flags, --NAME=VALUE (config fields: '
         '--config.FIELD=VALUE)')
