"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints/<step>/, with the model config
stored beside the arrays so that a workdir cannot be resumed with another architecture.

Nothing here deletes or overwrites a checkpoint except orbax's rotation of old ones after a
newer save (``keep``); a step that already exists is never saved again. Saves are written to a
temporary directory and renamed when complete, so a process killed mid-save leaves the previous
checkpoints intact.
"""
import contextlib
import io
import json
import logging
import time

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from flowpp_jax import fileio


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: unreadable, or of another architecture."""


def model_signature(model_cfg) -> dict:
  """The model config as plain JSON data: equal signatures mean interchangeable checkpoints."""
  return json.loads(model_cfg.to_json())


def _silence_failed_reads() -> None:
  """After a failed read: the unretrieved exceptions of its other in-flight reads are logged by
  asyncio when their tasks are collected, later (at exit, as tracebacks); the one
  CheckpointError already says what happened."""
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)


class Checkpoints:
  """The checkpoints of one workdir. Every process must create it and call save/restore
  (orbax coordinates them; only the primary host writes metadata)."""

  def __init__(self, workdir, *, keep: int = 3, read_only: bool = False):
    workdir = fileio.path(workdir)  # orbax writes gs:// itself, if it gets the URI intact
    self.directory = (workdir if fileio.is_remote(workdir) else workdir.absolute()) / 'checkpoints'
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'meta'))

  def latest_step(self):
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list:
    return list(self._manager.all_steps())

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts an asynchronous save of ``state`` (host arrays) at ``step``; False if that step
    already has a checkpoint (it is kept as it is)."""
    if step in self._manager.all_steps():
      return False
    tree = flax.serialization.to_state_dict(state)
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Blocks until the pending save is complete on disk."""
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    try:
      return self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # orbax raises many types for a damaged directory
      _silence_failed_reads()
      raise self._unreadable(step, e) from e

  def restore(self, step: int, abstract_state, model_cfg):
    """The TrainState at ``step``, as host numpy arrays shaped like ``abstract_state``.

    Raises CheckpointError if the checkpoint holds another architecture or cannot be read.
    """
    meta = self.read_meta(step)
    if meta.get('model') != model_signature(model_cfg):
      raise CheckpointError(
          f'{self.directory / str(step)} holds a model of another architecture than the '
          f'config; use a new --workdir, or the config the run was started with '
          f'({self.directory.parent / "config.json"})')
    target = flax.serialization.to_state_dict(abstract_state)
    target = jax.tree_util.tree_map(
        lambda x: np.zeros(x.shape, x.dtype), target)
    # A damaged file fails one read while tensorstore's other reads are still in flight; their
    # callbacks then hit orbax's closed event loop and print a traceback each. Keep those off
    # the console: the one CheckpointError says what happened.
    with contextlib.redirect_stderr(io.StringIO()):
      try:
        tree = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))['state']
      except Exception as e:
        time.sleep(1.0)  # let the in-flight callbacks finish while stderr is redirected
        _silence_failed_reads()
        raise self._unreadable(step, e) from e
    restored_shapes = jax.tree_util.tree_map(np.shape, tree)
    if restored_shapes != jax.tree_util.tree_map(np.shape, target):
      raise self._unreadable(step, 'its arrays do not have the shapes of the model')
    return flax.serialization.from_state_dict(abstract_state, tree)

  def _unreadable(self, step, reason) -> CheckpointError:
    text = str(reason).strip() or type(reason).__name__
    # The first line, without tensorstore's JSON spec dumps.
    first_line = text.splitlines()[0].split(' [')[0][:300]
    return CheckpointError(
        f'checkpoint {self.directory / str(step)} is unreadable ({first_line}); move it out '
        f'of {self.directory} to resume from an earlier one, or use a new --workdir')

  def close(self) -> None:
    self._manager.close()
