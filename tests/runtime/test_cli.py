"""The commands' shared plumbing: which log records reach the console."""
import logging
import os
import sys

from flowpp_jax.runtime import cli


def _exc_info_raised_in(filename: str):
  try:
    exec(compile('raise ValueError("RESOURCE_EXHAUSTED: No space left on device")', filename,
                 'exec'))
  except ValueError:
    return sys.exc_info()


def _record(pathname: str, exc_info=None):
  return logging.LogRecord('asyncio', logging.ERROR, pathname, 1771,
                           'Task exception was never retrieved', (), exc_info)


def test_orbax_records_and_its_failed_write_tasks_are_filtered():
  orbax_file = os.path.join(os.sep, 'venv', 'orbax', 'checkpoint', 'type_handlers.py')
  base_events = os.path.join(os.sep, 'usr', 'lib', 'asyncio', 'base_events.py')
  assert not cli._not_from_orbax(_record(orbax_file))
  # asyncio reports an orbax task's exception from its own file: the traceback says whose.
  assert not cli._not_from_orbax(_record(base_events, _exc_info_raised_in(orbax_file)))
  assert cli._not_from_orbax(_record(base_events, _exc_info_raised_in('/app/mine.py')))
  assert cli._not_from_orbax(_record(base_events))
