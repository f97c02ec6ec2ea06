"""A command's console holds its own lines: what the libraries report on their own is dropped.

Only the commands' entry point (``cli.run``) calls these, since each changes the whole
process; the library leaves logging and hooks as it finds them. What each drops, and why:
- orbax logs every save, and a failed background save one traceback per writer thread: its
  records go (each failure reaches the command as an exception, reported in one line);
- asyncio's "Task exception was never retrieved" and "Task was destroyed but it is pending":
  when one of orbax's reads or writes fails, its sibling tasks are abandoned, and asyncio logs
  each when it is collected, before the failure reaches the command or at exit (in these
  commands only orbax runs asyncio tasks);
- the unraisable "Event loop is closed": a failed read stops orbax's event loop while
  tensorstore's other reads are in flight, and each of their callbacks then reports it
  (hundreds, with tracebacks).
tests/runtime/test_console.py makes orbax, tensorstore and asyncio produce each of these.
"""
import logging
import os
import sys

from absl import logging as absl_logging

ABANDONED_TASK = ('Task exception was never retrieved', 'Task was destroyed but it is pending')


def from_orbax(record: logging.LogRecord) -> bool:
  """Whether ``record`` was logged by orbax's code (it logs through absl's logger)."""
  return f'{os.sep}orbax{os.sep}' in record.pathname


def abandoned_task(record: logging.LogRecord) -> bool:
  """Whether ``record`` is asyncio's report of a task that nobody awaits any more."""
  return str(record.msg).startswith(ABANDONED_TASK)


def _closed_loop_callback(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError) and unraisable.object is None
          and str(unraisable.exc_value) == 'Event loop is closed')


def quiet_libraries(verbose: bool) -> None:
  """Drops the records and unraisables above for the rest of the process; with ``verbose``
  (the command's --verbosity) they all stay."""
  if verbose:
    return
  absl_logging.set_verbosity(absl_logging.ERROR)
  absl_logging.get_absl_handler().addFilter(lambda record: not from_orbax(record))
  logging.getLogger('asyncio').addFilter(lambda record: not abandoned_task(record))
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _closed_loop_callback(unraisable):
      previous(unraisable)
  sys.unraisablehook = hook


def silence_after_error() -> None:
  """After a command's error line, while the process winds down, nothing more is printed:
  what the libraries report then (pending tasks of an aborted checkpoint read, collected at
  exit) would bury the line."""
  logging.disable(logging.CRITICAL)
  sys.unraisablehook = lambda unraisable: None
