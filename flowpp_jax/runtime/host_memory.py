"""Transparent huge pages for the host allocator, set before the process starts its work.

XLA:CPU allocates the temporaries of every call with malloc, which serves blocks this large
straight from mmap and returns them on free: the kernel then faults in and zeroes every 4 KiB
page again at every step. glibc >= 2.35 can ask for transparent huge pages for those blocks
(the ``glibc.malloc.hugetlb=1`` tunable), 512x fewer faults. glibc reads tunables only at
start-up, so the entry points re-execute themselves once with it set (figures:
docs/performance.md). ``FLOWPP_KEEP_MALLOC=1`` opts out. It only helps where XLA runs on the
CPU, which is decided when jax starts: before that, a jax accelerator plugin (CUDA, ROCm,
TPU) or a JAX_PLATFORMS that puts another platform first is taken to mean it will not.
"""
import importlib.metadata
import importlib.util
import os
import sys
from typing import Mapping, Optional

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'FLOWPP_KEEP_MALLOC'
_THP_SETTING = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> Optional[tuple]:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):  # not glibc, or not Linux
    return None
  return tuple(int(part) for part in version.split('.')[:2]) if name == 'glibc' else None


def _thp_available() -> bool:
  """Whether the kernel grants huge pages to a process that asks (mode madvise or always)."""
  try:
    with open(_THP_SETTING) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def _accelerator_plugin_installed() -> bool:
  """Whether jax will find a GPU or TPU plugin (found without importing jax)."""
  return (bool(importlib.metadata.entry_points(group='jax_plugins'))
          or importlib.util.find_spec('libtpu') is not None)


def cpu_backend_expected(environ: Mapping[str, str]) -> bool:
  """Whether jax's default backend will be the CPU: JAX_PLATFORMS lists it first, or, where
  that is unset, no accelerator plugin is installed. (With a plugin but no device, jax falls
  back to the CPU: JAX_PLATFORMS=cpu then says so in advance.)"""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  return not _accelerator_plugin_installed()


def tuned_environment(environ: Mapping[str, str]) -> Optional[dict]:
  """The environment to re-execute with, or None when there is nothing to change: already
  set, opted out, an accelerator run, not glibc >= 2.35, or no transparent huge pages on this
  kernel."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables or environ.get(OPT_OUT):
    return None
  if not cpu_backend_expected(environ):
    return None
  version = _glibc_version()
  if version is None or version < (2, 35) or not _thp_available():
    return None
  env = dict(environ)
  env['GLIBC_TUNABLES'] = f'{tunables}:{TUNABLE}' if tunables else TUNABLE
  return env


def reexec_with_huge_pages() -> None:
  """Replaces this process by the same command line (``sys.orig_argv``: ``-m module`` and
  interpreter options kept) with the tunable set, when it applies.

  Call it under ``if __name__ == '__main__'`` before anything else: nothing done before it
  survives, and imports before it are paid twice.
  """
  env = tuned_environment(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
