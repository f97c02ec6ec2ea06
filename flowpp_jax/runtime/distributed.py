"""Joining a multi-process run: ``jax.distributed`` from flowpp_jax.main's flags or the environment.

The rules (each flag falls back to its environment variable when not given):

  --coordinator_address=HOST:PORT  FLOWPP_COORDINATOR_ADDRESS  process 0's host, a free port
  --num_processes=N                FLOWPP_NUM_PROCESSES        N >= 1
  --process_id=I                   FLOWPP_PROCESS_ID           0 <= I < N, distinct per process
  --distributed                    (no variable)               detect the cluster

- None of the three and no --distributed: a single process; jax.distributed is not started.
- All three: ``jax.distributed.initialize(HOST:PORT, N, I)``. What GPU and CPU hosts need: every
  process gets the same address and N, and its own I.
- --distributed alone: ``jax.distributed.initialize()``, which reads them from the cluster
  (Cloud TPU pod slices, SLURM, Open MPI).
- Some of the three but not all, or a bad value: ValueError.
- --coordinator_timeout=S (default 300 s, jax's): how long the processes wait for each other
  to join. When that runs out, each prints one ``error:`` line naming the address and the
  timeout and exits with status 2 (jax itself would abort with a C++ stack trace).

Then every process runs a collective over each group of devices that training uses, so that
all connections are made while the processes are in step. On CPU, collectives between
processes go through gloo over TCP. This must run before anything touches a JAX backend
(``jax.devices()``, a computation, ...): JAX refuses to start the distributed runtime after
that.
"""
import os
import socket
import sys
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils

from flowpp_jax.runtime import parallel

_NO_CLUSTER = ('no Cloud TPU pod slice, SLURM or Open MPI job found; elsewhere give '
               '--coordinator_address, --num_processes and --process_id instead')
# The flag name -> its environment variable.
ENV_VARS = {'coordinator_address': 'FLOWPP_COORDINATOR_ADDRESS',
            'num_processes': 'FLOWPP_NUM_PROCESSES', 'process_id': 'FLOWPP_PROCESS_ID'}


def _integer(value, source: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f'{source} must be an integer, got {value!r}') from None


def initialize_args(distributed: bool = False, coordinator_address=None, num_processes=None,
                    process_id=None, environ=None):
  """The keyword arguments for ``jax.distributed.initialize`` ({}: detect the cluster), or
  None for a single process. Flags given as None fall back to ``environ`` (default
  os.environ). Raises ValueError naming the flag or variable that is missing or bad."""
  environ = os.environ if environ is None else environ
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  values, sources = {}, {}
  for name, value in given.items():
    if value is None and environ.get(ENV_VARS[name], '') != '':
      value, sources[name] = environ[ENV_VARS[name]], ENV_VARS[name]
    if value is not None:
      values[name] = value
      sources.setdefault(name, f'--{name}')
  if not values:
    return {} if distributed else None
  missing = [f'--{name} (or {ENV_VARS[name]})' for name in given if name not in values]
  if missing:
    raise ValueError(f'{", ".join(sources.values())} given without {", ".join(missing)}: a '
                     'multi-process run needs all three (or --distributed alone on a TPU pod '
                     'slice or SLURM)')
  address = str(values['coordinator_address'])
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f'{sources["coordinator_address"]} must be HOST:PORT (process 0\'s host '
                     f'and a free port), got {address!r}')
  count = _integer(values['num_processes'], sources['num_processes'])
  index = _integer(values['process_id'], sources['process_id'])
  if count < 1:
    raise ValueError(f'{sources["num_processes"]} must be >= 1, got {count}')
  if not 0 <= index < count:
    raise ValueError(f'{sources["process_id"]} must be in [0, {count}) for {count} '
                     f'processes, got {index}')
  return {'coordinator_address': address, 'num_processes': count, 'process_id': index}


DEFAULT_TIMEOUT_S = 300
# jax's own deadline comes this much after ours, so that ours always fires first.
_JAX_DEADLINE_MARGIN_S = 30


def initialize(kwargs: Optional[dict], timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
  """Starts jax.distributed with ``initialize_args``' result, as the module docstring says;
  does nothing for a single process (None). Blocks until all processes have joined, at most
  ``timeout_s`` seconds; then prints one error line and exits with status 2."""
  if kwargs is None:
    return
  if timeout_s < 1:
    raise ValueError(f'--coordinator_timeout must be >= 1 second, got {timeout_s}')
  # Read when the CPU backend is created: CPU processes run collectives with each other only
  # through such an implementation (gloo is jax 0.10's default; set so as not to depend on it).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # Its SIGTERM handler would catch a SIGTERM that comes before the trainer's own (which
  # decides collectively when to save and stop) and let the process run on: without it, such a
  # SIGTERM ends the process as it does a single-process run.
  jax.config.update('jax_enable_preemption_service', False)
  # A join that runs out of time ends in a C++ fatal error, which Python cannot catch: a timer
  # thread ends the process first (the join releases the GIL), with nothing yet written.
  watchdog = threading.Timer(timeout_s, _exit_not_joined, (kwargs, timeout_s))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs,
                               initialization_timeout=timeout_s + _JAX_DEADLINE_MARGIN_S)
  except ValueError as e:  # jax found no cluster to read the settings from
    if kwargs:
      raise
    raise ValueError(f'--distributed: {e} ({_NO_CLUSTER})') from e
  finally:
    watchdog.cancel()
  _connect_devices()


def _exit_not_joined(kwargs: dict, timeout_s: int) -> None:
  """The error line (and exit) of a join that did not complete within ``timeout_s``."""
  address = kwargs.get('coordinator_address')
  waited = f'within {timeout_s} s (--coordinator_timeout)'
  if address is not None and kwargs['process_id'] != 0 and not _listens(address):
    message = (f'could not reach the coordinator {address} {waited}: nothing listens there; '
               f'start process 0 on that host, or correct --coordinator_address')
  else:
    where = address or 'the coordinator that --distributed detected'
    count = kwargs.get('num_processes', 'the')
    message = (f'not all {count} processes joined at {where} {waited}; start every process '
               f'with the same --coordinator_address and --num_processes, or raise '
               f'--coordinator_timeout')
  print(f'error: {message}', file=sys.stderr, flush=True)
  os._exit(2)  # the main thread is blocked in jax's join; nothing has been written yet


def _listens(address: str) -> bool:
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host.strip('[]'), int(port)), timeout=5):
      return True
  except OSError:
    return False


def _connect_devices() -> None:
  """Runs one collective over each group of devices that the run's collectives use, while the
  processes are still in step.

  A group's connection is made at its first collective, and gloo (CPU) gives up on it after
  30 s, while a process may later lag further behind the others than that: on CPU, jax's
  persistent compilation cache serves only process 0 (the keys differ between processes, and
  only process 0 writes), so the others compile what it reads. Once connected, a collective
  waits for late processes far longer.
  """
  # Each local device with its counterparts on the other processes: orbax's barriers, and
  # broadcasting the initial state.
  multihost_utils.sync_global_devices('flowpp_jax: all processes joined')
  # Every device: the pmapped train and eval steps.
  jax.block_until_ready(parallel.count_processes(True))
