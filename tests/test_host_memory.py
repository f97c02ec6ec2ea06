"""flowpp_jax.host_memory: the entry points' re-execution with glibc's huge-page tunable."""
import os
import subprocess
import sys

from flowpp_jax import host_memory

_PRINT_ENV = ('import os, sys; from flowpp_jax import host_memory; '
              'host_memory.reexec_with_huge_pages(); '
              'print(os.environ.get("GLIBC_TUNABLES", ""), len(sys.argv))')


def _applies():
  return host_memory.tuned_environment({}) is not None


def test_tunable_is_added_once_and_kept_with_others():
  if not _applies():  # not glibc >= 2.35 with transparent huge pages: nothing to test
    assert host_memory.tuned_environment({'PATH': '/bin'}) is None
    return
  env = host_memory.tuned_environment({'PATH': '/bin'})
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': host_memory.TUNABLE}
  assert host_memory.tuned_environment(env) is None  # no second re-execution
  other = host_memory.tuned_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert other['GLIBC_TUNABLES'] == f'glibc.malloc.arena_max=2:{host_memory.TUNABLE}'
  assert host_memory.tuned_environment({host_memory.OPT_OUT: '1'}) is None


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
