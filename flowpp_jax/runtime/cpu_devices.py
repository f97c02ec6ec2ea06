"""One JAX device per CPU core, so that the trainer's data parallelism keeps every core busy.

JAX makes a single device of a whole CPU host, and XLA:CPU spreads only the large ops of a
program (matmuls, convolutions, long elementwise loops) over the cores. The rest runs on one
core while the others wait: the scanned layers' loop bookkeeping, copies of residuals, small
fusions. With one device per core, ``jax.pmap`` runs a slice of the global batch on each core
at once, and each slice's serial stretches overlap the other's work (figures:
docs/performance.md).

The entry points (``python -m flowpp_jax.main``, ``python -m flowpp_jax.bench``) call
``use_all_cores`` after reading the config and before JAX starts its backends. The count is
the largest one, up to the usable cores, that divides every global batch size (over the
processes), so any config that ran on one device still runs, and at most 8 (each device holds
its own copy of the training state).
An explicit choice wins:
``JAX_NUM_CPU_DEVICES`` (``jax_num_cpu_devices``) or ``--xla_force_host_platform_device_count``
in ``XLA_FLAGS``; ``FLOWPP_CPU_DEVICES=N`` asks for N here (1: JAX's single device). The
setting shapes the CPU backend alone: GPU and TPU hosts train on their accelerators as before.
"""
import os
from typing import Mapping, Optional, Sequence

import jax

ENV = 'FLOWPP_CPU_DEVICES'
_XLA_FLAG = '--xla_force_host_platform_device_count'
MAX_COUNT = 8


def usable_cores() -> int:
  """The cores this process may run on (its affinity mask: taskset, cgroup cpusets)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def divisor_count(cores: int, batch_sizes: Sequence[int], processes: int = 1) -> int:
  """The largest d in [1, min(cores, MAX_COUNT)] such that every batch size is a multiple of
  d * processes (1 when none is)."""
  for count in range(min(cores, MAX_COUNT), 1, -1):
    if all(size % (count * processes) == 0 for size in batch_sizes):
      return count
  return 1


def requested_count(environ: Mapping[str, str], cores: int, batch_sizes: Sequence[int],
                    processes: int = 1) -> Optional[int]:
  """How many CPU devices to ask JAX for, or None to leave its setting alone (the caller's
  XLA_FLAGS or JAX_NUM_CPU_DEVICES decide). Raises ValueError for a bad FLOWPP_CPU_DEVICES."""
  if _XLA_FLAG in environ.get('XLA_FLAGS', '') or environ.get('JAX_NUM_CPU_DEVICES', ''):
    return None
  value = environ.get(ENV, '').strip()
  if not value:
    return divisor_count(cores, batch_sizes, processes)
  if not value.isdigit() or int(value) < 1:
    raise ValueError(f'{ENV} must be a positive integer, got {value!r}')
  return int(value)


def use_all_cores(batch_sizes: Sequence[int], processes: int = 1,
                  environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
  """Sets ``jax_num_cpu_devices`` per ``requested_count`` (environ: default os.environ).
  Returns the count set, or None. Call it before anything touches a JAX backend."""
  environ = os.environ if environ is None else environ
  count = requested_count(environ, usable_cores(), batch_sizes, processes)
  if count is None or jax.config.jax_num_cpu_devices != -1:
    return None
  jax.config.update('jax_num_cpu_devices', count)
  return count
