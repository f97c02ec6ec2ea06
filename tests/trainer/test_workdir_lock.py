"""The workdir lock under the two races of a lock judged by its record: a holder that has not
written its record yet, and several starters that find a dead run's lock at once."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from flowpp_jax.trainer import workdir_lock

# Takes the kernel lock on train.lock the way acquire() does, then writes nothing.
_STARTING = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print('locked', flush=True)
time.sleep(120)
"""

# Waits for the go file, tries once, holds a won lock for a while.
_STARTER = """
import os, sys, time
from flowpp_jax.trainer import workdir_lock
workdir, go = sys.argv[1], sys.argv[2]
print('ready', flush=True)
while not os.path.exists(go):
  time.sleep(0.001)
try:
  lock = workdir_lock.WorkdirLock(workdir).acquire()
except ValueError as e:
  print('refused', e, flush=True)
else:
  print('won', flush=True)
  time.sleep(3)
  lock.release()
"""


def test_a_lock_whose_record_is_not_written_yet_is_held(tmp_path):
  path = tmp_path / workdir_lock.LOCK_FILE
  starting = subprocess.Popen([sys.executable, '-c', _STARTING, str(path)],
                              stdout=subprocess.PIPE, text=True)
  try:
    assert starting.stdout.readline() == 'locked\n'
    with pytest.raises(ValueError, match='is in use by a run that is starting'):
      workdir_lock.WorkdirLock(tmp_path).acquire()
    assert path.exists() and path.read_text() == ''
  finally:
    starting.kill()
    starting.wait()


def test_starters_racing_for_a_dead_runs_lock_yield_one_winner(tmp_path):
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {'host': os.uname().nodename, 'pid': 2 ** 22 + 7, 'started': 'long ago'}))
  go = tmp_path / 'go'
  starters = [subprocess.Popen([sys.executable, '-c', _STARTER, str(tmp_path), str(go)],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(6)]
  for starter in starters:
    assert starter.stdout.readline() == 'ready\n'
  go.touch()
  outcomes = [starter.communicate(timeout=120)[0] for starter in starters]
  assert sum(out.startswith('won') for out in outcomes) == 1, outcomes
  assert all(out.startswith(('won', 'refused')) for out in outcomes), outcomes
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_release_then_reacquire_and_the_record(tmp_path):
  lock = workdir_lock.WorkdirLock(tmp_path).acquire()
  record = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
  assert record['pid'] == os.getpid() and record['host'] == os.uname().nodename
  with pytest.raises(ValueError, match=f'in use by pid {os.getpid()}'):
    workdir_lock.WorkdirLock(tmp_path).acquire()  # another open file: the kernel refuses it
  lock.release()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
  workdir_lock.WorkdirLock(tmp_path).acquire().release()
