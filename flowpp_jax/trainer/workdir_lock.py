"""One training run per workdir: WORKDIR/train.lock, created atomically by the run's process 0.

The lock records host, pid, the process's start time (from /proc, to tell a live run from a
new process that reuses a dead run's pid) and the boot id. A lock whose process is gone on
this host (kill -9, a crash, a reboot) is stale: the next run replaces it. A lock from another
host cannot be checked from here and is honoured; if that run is gone, delete the file.

Workdirs in a bucket (gs://) are not locked: an object store offers no atomic
create-if-absent through etils.epath. Start one run per such workdir.
"""
import datetime
import json
import os
import socket

import jax
from jax.experimental import multihost_utils
import numpy as np

from flowpp_jax.runtime import fileio

LOCK_FILE = 'train.lock'


def _proc_start(pid: int) -> str:
  """The process's start time in clock ticks since boot ('' where /proc is not there)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return ''


def _boot_id() -> str:
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f.read().strip()
  except OSError:
    return ''


def _record() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'proc_start': _proc_start(os.getpid()), 'boot_id': _boot_id()}


def _alive(record: dict) -> bool:
  """Whether the run that wrote ``record`` may still be running (always, for another host)."""
  if record.get('host') != socket.gethostname():
    return True
  if record.get('boot_id') and record['boot_id'] != _boot_id():
    return False  # written before a reboot
  pid = int(record.get('pid', -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # someone else's live process
  # A live pid that started at another time is a new process reusing the number.
  return not record.get('proc_start') or record['proc_start'] == _proc_start(pid)


class WorkdirLock:
  """Held from acquire() to release(); acquire raises ValueError when a live run holds it."""

  def __init__(self, workdir):
    self.path = fileio.path(workdir) / LOCK_FILE
    self._held = False

  def acquire(self) -> 'WorkdirLock':
    if fileio.is_remote(self.path):
      return self
    for _ in range(2):  # a second try after removing a stale lock
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        try:
          record = json.loads(self.path.read_text())
        except (OSError, ValueError):
          record = {}  # half-written by a process killed at that instant: stale
        if record and _alive(record):
          workdir = self.path.parent
          hint = ('' if record.get('host') == socket.gethostname() else
                  f' (another host: if that run is gone, delete {self.path})')
          raise ValueError(f'{workdir} is in use by pid {record.get("pid")} on '
                           f'{record.get("host")} since {record.get("started")}; stop that '
                           f'run or pass another --workdir{hint}') from None
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w') as f:
        f.write(json.dumps(_record()) + '\n')
      self._held = True
      return self
    raise ValueError(f'{self.path} keeps reappearing: another run is starting on this workdir')

  def release(self) -> None:
    if self._held:
      self.path.unlink(missing_ok=True)
      self._held = False


def hold(workdir) -> WorkdirLock:
  """Process 0 takes the workdir's lock (creating the workdir); with several processes all of
  them learn the outcome, so that all refuse together. Raises ValueError when it is held."""
  lock, error = WorkdirLock(workdir), ''
  if jax.process_index() == 0:
    try:
      fileio.makedirs(workdir)
      lock.acquire()
    except ValueError as e:
      error = str(e)
  if jax.process_count() > 1:
    refused = int(multihost_utils.broadcast_one_to_all(np.int32(bool(error))))
    if refused and not error:
      error = f'{workdir} is in use by another run (process 0 says by whom)'
  if error:
    raise ValueError(error)
  return lock
