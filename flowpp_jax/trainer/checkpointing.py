"""Orbax checkpoints of the TrainState in WORKDIR/checkpoints/<step>/, with the model config
stored beside the arrays so that a workdir cannot be resumed with another architecture.

Nothing here deletes or overwrites a checkpoint except orbax's rotation of old ones after a
newer save (``keep``); a step that already exists is never saved again. Saves are written to a
temporary directory and renamed when complete, so a process killed mid-save leaves the previous
checkpoints intact. A save that fails (a full disk, say) removes its temporary directory, and
the next run's manager removes any left by a killed process (the workdir lock makes sure no
other run is writing one).
"""
import contextlib
import json
import shutil
import time

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from flowpp_jax.runtime import fileio


class CheckpointError(ValueError):
  """A checkpoint that cannot be used: unreadable, or of another architecture."""


def model_signature(model_cfg) -> dict:
  """The model config as plain JSON data: equal signatures mean interchangeable checkpoints."""
  return json.loads(model_cfg.to_json())


class Checkpoints:
  """The checkpoints of one workdir. Every process must create it and call save/restore
  (orbax coordinates them; only the primary host writes metadata)."""

  def __init__(self, workdir, *, keep: int = 3, read_only: bool = False):
    workdir = fileio.path(workdir)  # orbax writes gs:// itself, if it gets the URI intact
    self.directory = (workdir if fileio.is_remote(workdir) else workdir.absolute()) / 'checkpoints'
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f'no checkpoint in {self.directory}; train first (--mode=train '
                            'with the same --workdir)')
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True,
                                             cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'),
        item_handlers={'state': ocp.StandardCheckpointHandler(),  # their metadata is read
                       'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self):
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict) -> bool:
    """Starts an asynchronous save of ``state`` (host arrays) at ``step``; False if that step
    already has a checkpoint (it is kept as it is)."""
    if step in self._manager.all_steps():
      return False
    tree = flax.serialization.to_state_dict(state)
    with self._discarding_failed_saves():  # saving first waits for the previous save
      return self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Blocks until the pending save is complete on disk; raises what made it fail."""
    with self._discarding_failed_saves():
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _discarding_failed_saves(self):
    """Removes the temporary directories of a save that failed, so that a full disk gets
    back the space the incomplete checkpoint took; the complete ones stay."""
    try:
      yield
    except Exception:
      if not fileio.is_remote(self.directory) and jax.process_index() == 0:
        self._remove_partial_saves()
      raise

  def _remove_partial_saves(self, settle_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """The failure of one array's write ends the save while tensorstore's writes of the
    others are still in flight, and each of those creates the folders it writes into again:
    one removal can come too early, or fail on a folder being filled. So the folders are
    removed until none has come back for ``settle_s`` (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
      partials = list(self.directory.glob('*.orbax-checkpoint-tmp*'))
      for partial in partials:
        shutil.rmtree(partial, ignore_errors=True)
      if not partials or time.monotonic() > deadline:
        return
      time.sleep(settle_s)

  @contextlib.contextmanager
  def _reading(self, step: int):
    """Turns any failure of a read of ``step`` into one CheckpointError (orbax raises many
    types for a damaged directory)."""
    try:
      yield
    except Exception as e:
      raise self._unreadable(step, e) from e

  def read_meta(self, step: int) -> dict:
    with self._reading(step):
      return self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def _check_model(self, step: int, model_cfg) -> None:
    if self.read_meta(step).get('model') != model_signature(model_cfg):
      raise CheckpointError(
          f'{self.directory / str(step)} holds a model of another architecture than the '
          f'config; use a new --workdir, or the config the run was started with '
          f'({self.directory.parent / "config.json"})')

  def _restore_into(self, step: int, target) -> dict:
    target = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), target)
    with self._reading(step):
      return self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))['state']

  def restore_state_dict(self, step: int, model_cfg) -> dict:
    """The TrainState at ``step`` as a state dict of host numpy arrays, shaped as the
    checkpoint records them: no model is traced to restore it (the recorded config must be
    ``model_cfg``). Raises CheckpointError as ``restore`` does."""
    self._check_model(step, model_cfg)
    with self._reading(step):
      recorded = self._manager.item_metadata(step)['state']
    return self._restore_into(step, recorded)

  def restore(self, step: int, abstract_state, model_cfg):
    """The TrainState at ``step``, as host numpy arrays shaped like ``abstract_state``.

    Raises CheckpointError if the checkpoint holds another architecture or cannot be read.
    """
    self._check_model(step, model_cfg)
    target = flax.serialization.to_state_dict(abstract_state)
    tree = self._restore_into(step, target)
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
    """Waits for the pending save and stops orbax's threads; a save that failed was already
    raised by save or wait."""
    with contextlib.suppress(Exception):
      self._manager.close()
