"""One training run per workdir: WORKDIR/train.lock, held by the run's process 0.

The lock is the kernel's (``fcntl.flock`` on the file), so it is released when its process
ends however it ends (kill -9, a crash): no guessing whether a recorded pid is still alive.
The file also records host, pid and start time, for the message a second run prints. A record
left behind by a run on another host is honoured, since a file system shared between hosts
may keep flock locks per host: if that run is gone, delete the file (the error says so).

Workdirs in a bucket (gs://) are not locked: an object store offers no lock through
etils.epath. Nor are folders on a file system without flock (some cluster file systems): the
run says so in a line. Start one run per such workdir.
"""
import datetime
import errno
import fcntl
import json
import os
import socket

import jax
from jax.experimental import multihost_utils
import numpy as np

from flowpp_jax.runtime import fileio

LOCK_FILE = 'train.lock'


def _record() -> dict:
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}


def _read_record(fd: int) -> dict:
  """The record in the lock file, or {} (empty: its holder has not written it yet)."""
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or '{}')
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Held from acquire() to release(); acquire raises ValueError when another run holds it.
  ``unlocked`` says why a local workdir could not be locked (None when it is, or for a
  bucket, which is never locked)."""

  def __init__(self, workdir):
    self.path = fileio.path(workdir) / LOCK_FILE
    self.unlocked = None
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    if fileio.is_remote(self.path):
      return self
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        record = _read_record(fd)
        os.close(fd)
        raise ValueError(self._in_use(record)) from None
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          raise
        self.unlocked = f'its file system has no file locks ({e.strerror})'
        return self
      # A holder that released removed the file after we opened it: lock the new one instead.
      try:
        current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        current = False
      if not current:
        os.close(fd)
        continue
      record = _read_record(fd)
      if record and record.get('host') != socket.gethostname():
        os.close(fd)
        raise ValueError(self._in_use(record))
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(_record()) + '\n').encode(), 0)
      self._fd = fd
      return self

  def _in_use(self, record: dict) -> str:
    workdir = self.path.parent
    if not record:
      return (f'{workdir} is in use by a run that is starting ({self.path} holds no record '
              'yet); stop that run or pass another --workdir')
    hint = ('' if record.get('host') == socket.gethostname() else
            f' (another host: if that run is gone, delete {self.path})')
    return (f'{workdir} is in use by pid {record.get("pid")} on {record.get("host")} since '
            f'{record.get("started")}; stop that run or pass another --workdir{hint}')

  def release(self) -> None:
    if self._fd is not None:
      # Removed while still held, so that no other run can hold the file it names meanwhile.
      self.path.unlink(missing_ok=True)
      os.close(self._fd)
      self._fd = None


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
