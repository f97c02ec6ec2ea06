"""Moving host data onto the local devices for ``jax.pmap`` and back.

With several processes, pmap runs over every process's devices: each process passes its local
share (leading axis: its local device count) and collectives reduce over all of them.
"""
import jax
import numpy as np

# The one pmap axis name: arrays placed by one pmap are reused by the others without re-placing
# or recompiling only when the axis names agree.
AXIS = 'batch'


def shard(x):
  """Host array [n, ...] -> [local_devices, n / local_devices, ...] (pmap splits axis 0)."""
  x = np.asarray(x)
  devices = jax.local_device_count()
  return x.reshape(devices, x.shape[0] // devices, *x.shape[1:])


def examples_per_device(n: int) -> int:
  """Examples on each local device when ``split_examples`` splits n: ceil(n / devices)."""
  return -(-n // jax.local_device_count())


def split_examples(x):
  """Host array [n, ...] -> [local_devices, examples_per_device(n), ...]: ``shard`` for any
  n, the last example repeated to fill the last device. For computations whose examples are
  independent of one another; ``join_examples`` drops the repeats."""
  x = np.asarray(x)
  fill = examples_per_device(len(x)) * jax.local_device_count() - len(x)
  return shard(np.concatenate([x, np.repeat(x[-1:], fill, axis=0)]) if fill else x)


def join_examples(y, n: int):
  """[devices, m, ...] (device or host) -> host [n, ...]: the first n examples in order."""
  y = np.asarray(y)
  return y.reshape(-1, *y.shape[2:])[:n]


def over_examples(fn):
  """``fn(params, *batched)``, whose outputs run over the examples of ``batched`` on axis 0
  and whose examples are independent of one another (the ELBO, decoding), as
  ``call(p_params, *batched)`` -> host outputs: the examples split over the local devices
  (``split_examples``), ``fn`` pmapped, the outputs joined (``join_examples``), so they do not
  depend on the device count. ``p_params``: replicated (``replicate``, or the trainer's
  replicated state). With several processes each runs every example on its first device."""
  split_fn = jax.pmap(fn, axis_name=AXIS)
  one_fn = jax.jit(fn)

  def call(p_params, *batched):
    if jax.process_count() > 1:
      return jax.tree_util.tree_map(np.asarray, one_fn(unreplicate(p_params), *batched))
    n = len(batched[0])
    out = split_fn(p_params, *(split_examples(x) for x in batched))
    return jax.tree_util.tree_map(lambda y: join_examples(y, n), out)
  return call


def replicate(tree):
  """Host ``tree`` -> one copy per local device, stacked on a leading axis, placed as pmap
  places its outputs (so a pmapped step compiles once whether it gets these or its own
  outputs)."""
  devices = jax.local_device_count()
  # broadcast_to is a view: no host copies; the identity pmap moves one copy to each device.
  stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(x, (devices, *np.shape(x))), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS)(stacked)


def unreplicate(tree):
  """The first device's copy of a replicated tree, as host numpy arrays."""
  def first(x):
    data = np.asarray(x.addressable_data(0))
    # pmap built on shard_map keeps the device axis (size 1) in each shard; the old one not.
    return data[0] if data.ndim == x.ndim else data
  return jax.tree_util.tree_map(first, tree)


# Module level so that it is traced and compiled once per process.
_COUNT = jax.pmap(lambda x: jax.lax.psum(x, AXIS), axis_name=AXIS)


def count_processes(flag: bool):
  """Starts counting the processes that pass ``flag`` True: a collective over every device,
  so every process must call it at the same point of its sequence of collectives. Returns a
  replicated int32 array (read it with ``unreplicate``) without waiting for the result."""
  flags = np.zeros(jax.local_device_count(), np.int32)
  flags[0] = flag  # once per process, however many devices it has
  return _COUNT(flags)
