"""Checkpoints' handling of a failed read, without a training run."""
import logging

import pytest

from flowpp_jax.trainer import checkpointing

UNRETRIEVED = 'Task exception was never retrieved\nfuture: <Task finished coro=<read()>>'


def test_unretrieved_task_errors_are_dropped_during_and_after_a_failed_read(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(checkpointing._read_errors, 'failed', False)
  checkpoints = checkpointing.Checkpoints(tmp_path)
  asyncio_log = logging.getLogger('asyncio')

  def failing_restore(*args, **kwargs):
    asyncio_log.error(UNRETRIEVED)  # a sibling read's task collected before the failure is seen
    raise ValueError('manifest is not valid JSON')

  monkeypatch.setattr(checkpoints._manager, 'restore', failing_restore)
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    asyncio_log.error(UNRETRIEVED)  # no read yet: kept
    assert len(caplog.records) == 1
    with pytest.raises(checkpointing.CheckpointError, match='unreadable'):
      checkpoints.read_meta(4)
    asyncio_log.error(UNRETRIEVED)  # collected after the failure (at exit, say)
    asyncio_log.error('Unclosed connection')  # anything else is kept
  assert [r.getMessage() for r in caplog.records] == [UNRETRIEVED, 'Unclosed connection']
