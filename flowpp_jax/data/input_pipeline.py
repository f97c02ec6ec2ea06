"""Deterministic, resumable, host-sharded batches.

Training reads an infinite stream: epoch e is the train split in the order
``np.random.default_rng([seed, e]).permutation(N)``, and the global batch of step s is stream
positions [s*B, (s+1)*B). Process p of P reads only its contiguous slice of that batch, so a
batch is a pure function of (seed, step): resuming needs only the step, and the positions (from
which the trainer derives per-example randomness) do not depend on the number of hosts.

A source is anything with ``len(src)`` and ``src[indices]`` -> uint8 [n, H, W, C] (see
datasets.load_split).
"""
import functools
import itertools
import queue
import threading

import numpy as np


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
  """This host's contiguous part of a global batch's positions 0 .. global_batch - 1."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  if global_batch < 1 or global_batch % process_count:
    raise ValueError(f'global batch {global_batch} must be a positive multiple of the '
                     f'process count {process_count}')
  size = global_batch // process_count
  return slice(process_index * size, (process_index + 1) * size)


class TrainBatches:
  """The training stream of one host (see the module docstring)."""

  def __init__(self, source, global_batch: int, seed: int, process_index: int = 0,
               process_count: int = 1, prefetch_size: int = 2):
    self._slice = host_slice(global_batch, process_index, process_count)
    if len(source) < 1:
      raise ValueError('the training split is empty')
    if seed < 0:
      raise ValueError(f'seed must be >= 0, got {seed}')
    self.source = source
    self.global_batch = global_batch
    self.host_batch_size = global_batch // process_count
    self.seed = seed
    self.prefetch_size = prefetch_size
    # Per instance, two epochs: a batch spans at most two consecutive ones unless B > N.
    self._permutation = functools.lru_cache(maxsize=2)(self._epoch_permutation)

  def positions(self, step: int) -> np.ndarray:
    """int64 [B/P]: the stream positions this host reads at ``step``."""
    if step < 0:
      raise ValueError(f'step must be >= 0, got {step}')
    start = step * self.global_batch
    return np.arange(start + self._slice.start, start + self._slice.stop, dtype=np.int64)

  def example_indices(self, positions: np.ndarray) -> np.ndarray:
    """int64 [n]: the train example at each stream position."""
    n = len(self.source)
    epochs, offsets = np.divmod(positions, n)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      at = epochs == epoch
      indices[at] = self._permutation(int(epoch))[offsets[at]]
    return indices

  def _epoch_permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.source))

  def host_batch(self, step: int):
    """(images uint8 [B/P, H, W, C], positions int64 [B/P]) of this host at ``step``."""
    positions = self.positions(step)
    return self.source[self.example_indices(positions)], positions

  def iterate(self, start_step: int = 0):
    """Yields (step, images, positions) from ``start_step`` on, forever, read ahead."""
    batches = ((step, *self.host_batch(step)) for step in itertools.count(start_step))
    return prefetch(batches, self.prefetch_size)


def eval_batches(source, global_batch: int, num_examples: int = 0, process_index: int = 0,
                 process_count: int = 1, prefetch_size: int = 2):
  """Yields this host's share of the first ``num_examples`` of a split (0: all), in order.

  Every host yields the same number of fixed-shape batches; the last global batch is padded
  with zero images, so each example is counted exactly once across hosts.

  Yields:
    (images uint8 [B/P, H, W, C], mask float32 [B/P] (1: real, 0: padding),
     indices int64 [B/P] (the example's index in the split; >= num_examples for padding)).
  """
  part = host_slice(global_batch, process_index, process_count)
  total = len(source)
  if num_examples == 0:
    num_examples = total
  if not 0 < num_examples <= total:
    raise ValueError(f'num_examples must be in [1, {total}] or 0 (all), got {num_examples}')

  def batches():
    for start in range(0, num_examples, global_batch):
      indices = np.arange(start + part.start, start + part.stop, dtype=np.int64)
      real = indices < num_examples
      images = source[indices[real]]
      if not real.all():
        padded = np.zeros((len(indices), *images.shape[1:]), images.dtype)
        padded[:len(images)] = images  # Real examples come first: indices are increasing.
        images = padded
      yield images, real.astype(np.float32), indices

  return prefetch(batches(), prefetch_size)


def sample_init_batch(source, n: int, seed: int) -> np.ndarray:
  """uint8 [n, H, W, C]: n distinct examples chosen by a seeded permutation."""
  if not 0 < n <= len(source):
    raise ValueError(f'init batch size must be in [1, {len(source)}], got {n}')
  return source[np.random.default_rng(seed).permutation(len(source))[:n]]


def prefetch(iterator, size: int):
  """Yields ``iterator``'s items, produced up to ``size`` ahead by a background thread.

  The thread is a daemon (it never keeps the process alive) and stops when the returned
  generator is closed; an exception it meets is raised in the consumer. ``size`` 0: no thread.
  """
  if size < 1:
    yield from iterator
    return
  items = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item):
    # Time out now and then so that a closed consumer does not leave the thread blocked.
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in iterator:
        if not put(('item', item)):
          return
    except BaseException as e:  # pylint: disable=broad-except  # Raised in the consumer.
      put(('error', e))
      return
    put(('end', None))

  threading.Thread(target=produce, name='flowpp-prefetch', daemon=True).start()
  try:
    while True:
      kind, value = items.get()
      if kind == 'end':
        return
      if kind == 'error':
        raise value
      yield value
  finally:
    stop.set()
