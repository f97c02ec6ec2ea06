"""What every command line shares: one-line errors, flag parsing that reports bad flags that
way, and quiet library logging."""
import logging as std_logging
import os
import sys

from absl import app, flags, logging


def fail(message: str, status: int = 2) -> None:
  """Prints a one-line error and exits (status 2: bad input, nothing was changed). Nothing is
  logged after the line: what libraries report while the process winds down (asyncio's
  pending or failed tasks of an aborted checkpoint read, collected at exit) would bury it."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  std_logging.disable(std_logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
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
  """Runs ``main(argv)`` as a command whose flag ``required`` (if any) must be given."""
  if required:
    flags.mark_flag_as_required(required)
  app.run(main, flags_parser=parse_flags)


def _in_orbax(path: str) -> bool:
  return f'{os.sep}orbax{os.sep}' in path


def _not_from_orbax(record) -> bool:
  """False for orbax's records, and for asyncio's "Task exception was never retrieved" of an
  orbax write task (a full disk fails each array's write after the save has failed)."""
  if _in_orbax(record.pathname):
    return False
  error = record.exc_info[1] if record.exc_info else None
  frame = error.__traceback__ if error is not None else None
  while frame is not None:
    if _in_orbax(frame.tb_frame.f_code.co_filename):
      return False
    frame = frame.tb_next
  return True


def quiet_logging() -> None:
  """Unless --verbosity is given: orbax logs every save, and tfds every missing metadata file,
  so only errors are logged, and not orbax's, which each reach the command as an exception
  that it reports in one line (a failed background save logs a traceback per thread)."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.ERROR)
    logging.get_absl_handler().addFilter(_not_from_orbax)


def refuse_arguments(argv) -> None:
  """Commands take flags only."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings are flags, --NAME=VALUE (config fields: '
         '--config.FIELD=VALUE)')
