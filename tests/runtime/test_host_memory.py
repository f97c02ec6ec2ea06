"""flowpp_jax.runtime.host_memory: the entry points' re-execution with glibc's huge-page tunable."""
import os
import subprocess
import sys

import pytest

from flowpp_jax.runtime import host_memory

_PRINT_ENV = ('import os, sys; from flowpp_jax.runtime import host_memory; '
              'host_memory.reexec_with_huge_pages(); '
              'print(os.environ.get("GLIBC_TUNABLES", ""), len(sys.argv))')


def _applies():
  return host_memory.tuned_environment({}) is not None


@pytest.fixture
def huge_pages_machine(monkeypatch):
  """This machine, made one where the tunable applies (glibc 2.35, huge pages on)."""
  monkeypatch.setattr(host_memory, '_glibc_version', lambda: (2, 35))
  monkeypatch.setattr(host_memory, '_thp_available', lambda: True)
  monkeypatch.setattr(host_memory, '_accelerator_plugin_installed', lambda: False)
  return monkeypatch


def test_tunable_is_added_once_and_kept_with_others(huge_pages_machine):
  env = host_memory.tuned_environment({'PATH': '/bin'})
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': host_memory.TUNABLE}
  assert host_memory.tuned_environment(env) is None  # no second re-execution
  other = host_memory.tuned_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert other['GLIBC_TUNABLES'] == f'glibc.malloc.arena_max=2:{host_memory.TUNABLE}'
  assert host_memory.tuned_environment({host_memory.OPT_OUT: '1'}) is None


@pytest.mark.parametrize('glibc,thp', [((2, 34), True), (None, True), ((2, 39), False)])
def test_tunable_is_left_out_where_it_does_not_apply(huge_pages_machine, glibc, thp):
  huge_pages_machine.setattr(host_memory, '_glibc_version', lambda: glibc)
  huge_pages_machine.setattr(host_memory, '_thp_available', lambda: thp)
  assert host_memory.tuned_environment({'PATH': '/bin'}) is None


def test_no_reexecution_where_an_accelerator_will_run(huge_pages_machine):
  assert host_memory.tuned_environment({'JAX_PLATFORMS': 'cuda,cpu'}) is None
  assert host_memory.tuned_environment({'JAX_PLATFORMS': 'tpu'}) is None
  assert host_memory.tuned_environment({'JAX_PLATFORMS': 'cpu'}) is not None
  huge_pages_machine.setattr(host_memory, '_accelerator_plugin_installed', lambda: True)
  assert host_memory.tuned_environment({}) is None  # a CUDA or TPU plugin: its device runs
  assert host_memory.tuned_environment({'JAX_PLATFORMS': 'cpu'}) is not None


def test_an_accelerator_backend_is_never_missed():
  """jax finds its accelerator plugins through the 'jax_plugins' entry points: where the check
  sees none, jax runs on the CPU (a plugin without a device also falls back to it)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu':
    assert host_memory._accelerator_plugin_installed()
  if not host_memory._accelerator_plugin_installed():
    assert jax.default_backend() == 'cpu'


def _run(extra_env):
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT)}
  env.update(extra_env)
  out = subprocess.run([sys.executable, '-c', _PRINT_ENV, 'a', 'b'], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  return (out[0] if len(out) == 2 else ''), int(out[-1])


def test_reexecuted_process_has_the_tunable_and_the_same_arguments():
  tunables, argc = _run({})
  assert argc == 3  # '-c' becomes argv[0]; 'a', 'b' survive the re-execution
  assert tunables == (host_memory.TUNABLE if _applies() else '')
  assert _run({host_memory.OPT_OUT: '1'})[0] == ''
