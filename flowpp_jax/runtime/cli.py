"""What every command line shares: one-line errors, flag parsing that reports bad flags that
way, and a console free of the libraries' own reports (console.py). Only commands use it."""
import sys

from absl import app, flags

from flowpp_jax.runtime import console


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
