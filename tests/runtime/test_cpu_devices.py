"""One JAX device per CPU core: the count chosen, what overrides it, and that JAX takes it."""
import os
import subprocess
import sys

import pytest

from flowpp_jax.runtime import cpu_devices
from conftest import ROOT


@pytest.mark.parametrize('cores,batch_sizes,processes,expected', [
    (2, (16, 20), 1, 2),
    (2, (15, 20), 1, 1),    # an odd batch: one device, as before
    (4, (12, 20), 1, 4),
    (4, (12, 18), 1, 3),    # 4 divides neither; 3 divides both
    (4, (12, 20), 2, 2),    # 2 processes x 2 devices divide both; 2 x 3 does not
    (64, (64, 128), 1, 8),  # at most 8
    (1, (64,), 1, 1),
    (0, (64,), 1, 1),
])
def test_divisor_count(cores, batch_sizes, processes, expected):
  assert cpu_devices.divisor_count(cores, batch_sizes, processes) == expected


@pytest.mark.parametrize('environ,expected', [
    ({}, 2),
    ({'XLA_FLAGS': '--xla_backend_optimization_level=0'}, 2),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}, None),
    ({'JAX_NUM_CPU_DEVICES': '4'}, None),
    ({'JAX_NUM_CPU_DEVICES': '4', 'FLOWPP_CPU_DEVICES': '3'}, None),
    ({'FLOWPP_CPU_DEVICES': '3'}, 3),  # as asked, even where it does not divide the batch
    ({'FLOWPP_CPU_DEVICES': '1'}, 1),
    ({'FLOWPP_CPU_DEVICES': ''}, 2),
])
def test_requested_count(environ, expected):
  assert cpu_devices.requested_count(environ, 2, (16, 20)) == expected


@pytest.mark.parametrize('value', ['0', '-1', 'two', '1.5'])
def test_bad_request_is_refused(value):
  with pytest.raises(ValueError, match=f'FLOWPP_CPU_DEVICES must be a positive integer.*{value}'):
    cpu_devices.requested_count({'FLOWPP_CPU_DEVICES': value}, 2, (16,))


def devices_in_fresh_process(env_add):
  """(use_all_cores' result, jax.device_count()) in a new interpreter, ``env_add`` added to
  the environment."""
  code = ('from flowpp_jax.runtime import cpu_devices; import jax; '
          'print(cpu_devices.use_all_cores((12,)), jax.device_count())')
  env = {k: v for k, v in os.environ.items()
         if k not in ('JAX_NUM_CPU_DEVICES', 'FLOWPP_CPU_DEVICES')}
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(env, JAX_PLATFORMS='cpu', **env_add))
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.split()


@pytest.mark.parametrize('env_add,expected', [
    ({'FLOWPP_CPU_DEVICES': '3'}, ['3', '3']),
    ({'JAX_NUM_CPU_DEVICES': '2', 'FLOWPP_CPU_DEVICES': '3'}, ['None', '2']),
])
def test_jax_gets_the_count(env_add, expected):
  assert devices_in_fresh_process(env_add) == expected
