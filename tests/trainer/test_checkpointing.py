"""Checkpoints' clean-up of a failed save, without a training run."""
import threading
import time

from flowpp_jax.trainer import checkpointing


def test_a_failed_save_is_removed_even_while_its_writes_land(tmp_path):
  """A full disk fails one array's write while tensorstore still writes the others, and each
  of those creates its folder again after the first removal (tests/trainer/test_train.py's
  full-disk test meets this on some machines)."""
  checkpoints = checkpointing.Checkpoints(tmp_path)
  partial = checkpoints.directory / '12.orbax-checkpoint-tmp-1'
  (partial / 'state' / 'd').mkdir(parents=True)

  def straggling_writes():
    for i in range(3):
      time.sleep(0.2)
      try:
        (partial / 'state' / 'd').mkdir(parents=True, exist_ok=True)
        (partial / 'state' / 'd' / f'chunk{i}').write_bytes(b'x' * 4096)
      except FileNotFoundError:
        pass  # removed between the two: that write failed
  writer = threading.Thread(target=straggling_writes)
  writer.start()
  checkpoints._remove_partial_saves(settle_s=0.5)  # pylint: disable=protected-access
  writer.join()
  assert not partial.exists()
  checkpoints.close()
