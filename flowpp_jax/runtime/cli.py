"""What every command line shares: the --config flag and its loading, one-line errors, flag
parsing that reports bad flags that way, progress lines, a console free of the libraries'
own reports (console.py) and the compilation cache (compile_cache.py). Only the commands
(flowpp_jax/*.py, flowpp_jax/tools/*.py) use it; none of them imports another."""
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from flowpp_jax.runtime import compile_cache, console

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


def run(main, required: str | None, compiles: bool = True) -> None:
  """Runs ``main(argv)`` as a command whose flag ``required`` (if any) must be given: the
  command's entry point, which alone changes the process's logging and hooks (console.py)
  and, for a command that ``compiles``, turns on the compilation cache (compile_cache.py)."""
  if required:
    flags.mark_flag_as_required(required)
  if compiles:
    flags.DEFINE_string(
        'compilation_cache', None, 'The folder that keeps compiled programs for the next '
        f'run (default: ${compile_cache.ENV}, else $XDG_CACHE_HOME/flowpp_jax/xla or '
        f'~/.cache/flowpp_jax/xla); "{compile_cache.OFF}" turns it off.')

  def command(argv):
    console.quiet_libraries(verbose=flags.FLAGS['verbosity'].present)
    if compiles:
      _start_compilation_cache(flags.FLAGS.compilation_cache)
    return main(argv)
  try:
    app.run(command, flags_parser=parse_flags)
  except SystemExit as e:
    if e.code:  # an error line was printed: nothing may follow it
      console.silence_after_error()
    raise


def _start_compilation_cache(flag: str | None) -> None:
  """The compilation cache of ``--compilation_cache=flag``, or the user's own
  JAX_COMPILATION_CACHE_DIR; a failure is one warning line (compile_cache.py)."""
  warn = lambda line: print(line, file=sys.stderr, flush=True)
  folder = os.environ.get(compile_cache.JAX_ENV)
  if not folder:
    root = compile_cache.chosen_root(flag)
    if root is None:
      return
    try:
      folder = compile_cache.enable(root)
    except OSError as e:
      warn(f'warning: no compilation cache: {root} cannot hold one ({e.strerror or e}); '
           'every program is compiled afresh')
      return
  compile_cache.report_failures(folder, warn)


def refuse_arguments(argv) -> None:
  """Commands take flags only."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; settings are flags, --NAME=VALUE (config fields: '
         '--config.FIELD=VALUE)')
