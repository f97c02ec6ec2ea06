"""Ctrl-C for the commands that have nothing to save: one line, status 130, no traceback.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be, and in a
JAX program that is often one of its callbacks (garbage collection, a compilation), which
prints "Exception ignored in ..." with a traceback and runs on. A handler that exits instead
stops the process at once. Training handles SIGINT itself (flowpp_jax/trainer/loop.py): it saves a
checkpoint first.
"""
import os
import signal
import sys

INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


def exit_now(message: str) -> None:
  """Prints ``message`` on stderr and ends the process with status 130, skipping Python's
  shutdown (which would wait for JAX's and orbax's threads)."""
  print(message, file=sys.stderr, flush=True)
  os._exit(INTERRUPTED_EXIT_CODE)  # pylint: disable=protected-access


def exit_on_ctrl_c(what: str) -> None:
  """From now on Ctrl-C ends the process with 'WHAT: stopped by Ctrl-C' and status 130."""
  signal.signal(signal.SIGINT, lambda signum, frame: exit_now(f'{what}: stopped by Ctrl-C'))
