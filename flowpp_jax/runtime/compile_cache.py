"""jax's persistent compilation cache, one folder per machine: each program is compiled once
per machine instead of once per process.

The commands turn it on at their entry point (``cli.run``); the library leaves jax's
configuration alone, and a library user opts in with ``flowpp_jax.enable_compilation_cache()``.
The cache lives under ROOT: ``--compilation_cache=DIR`` of a command, else the environment's
FLOWPP_JAX_COMPILATION_CACHE, else $XDG_CACHE_HOME/flowpp_jax/xla (~/.cache/flowpp_jax/xla);
``off`` turns it off. A JAX_COMPILATION_CACHE_DIR that the user set is jax's own setting and
wins: the commands then leave the cache as jax configures it.

jax's cache key holds the program, jaxlib's version, the backend's platform and version, the
XLA flags and the compile options, but on CPU nothing about the processor: a program compiled
for an AVX-512 machine could be loaded on one without it (a home folder shared by a
cluster's machines). So each machine gets its own folder under ROOT, named after its CPU
(model and instruction-set features), jax's and jaxlib's versions and XLA_FLAGS, with a
machine.json that says which. Entries that a machine cannot load (XLA:CPU refuses programs
built for other CPU features) or that are damaged are compiled afresh; ``report_failures``
makes a command say so in one line and removes the damaged files.
"""
import glob
import hashlib
import json
import os
import pathlib
import platform
import warnings
import zlib
from importlib import metadata
from typing import Callable, Mapping, Optional

ENV = 'FLOWPP_JAX_COMPILATION_CACHE'
OFF = 'off'
JAX_ENV = 'JAX_COMPILATION_CACHE_DIR'
# /proc/cpuinfo fields that describe the processor (x86, ARM, RISC-V), not one core's state.
_CPU_FIELDS = ('vendor_id', 'cpu family', 'model', 'model name', 'stepping', 'flags',
               'Features', 'CPU implementer', 'CPU architecture', 'CPU variant', 'CPU part',
               'CPU revision', 'isa', 'uarch')
_ENTRY_SUFFIX = '-cache'  # jax's file cache names an entry KEY-cache


def cpu_description(cpuinfo: Optional[str] = None) -> dict:
  """The processor's identity: the first processor's fields of ``cpuinfo`` (default: this
  machine's /proc/cpuinfo), or platform.processor() where there is none."""
  if cpuinfo is None:
    try:
      with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ''
  fields = {}
  for line in cpuinfo.split('\n\n')[0].splitlines():
    name, _, value = line.partition(':')
    if name.strip() in _CPU_FIELDS:
      fields[name.strip()] = ' '.join(sorted(value.split())) if name.strip() in (
          'flags', 'Features', 'isa') else value.strip()
  return fields or {'processor': platform.processor()}


def _version(package: str) -> str:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return 'none'


def machine(cpuinfo: Optional[str] = None,
            environ: Mapping[str, str] = os.environ) -> dict:
  """What a compiled program depends on beyond jax's own key: the CPU, jax's and jaxlib's
  versions, and XLA_FLAGS (jax hashes them too; here they also keep the folders apart)."""
  return {'architecture': platform.machine(), 'cpu': cpu_description(cpuinfo),
          'jax': _version('jax'), 'jaxlib': _version('jaxlib'),
          'xla_flags': environ.get('XLA_FLAGS', '')}


def machine_folder(root, description: dict) -> pathlib.Path:
  """ROOT/<architecture>-jax<version>-<16 hex digits of SHA-256 over ``description``>."""
  digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
  return (pathlib.Path(root).expanduser()
          / f'{description["architecture"]}-jax{description["jax"]}-{digest}')


def default_root(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
  """$XDG_CACHE_HOME/flowpp_jax/xla, or ~/.cache/flowpp_jax/xla."""
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(base) / 'flowpp_jax' / 'xla'


def chosen_root(flag: Optional[str],
                environ: Mapping[str, str] = os.environ) -> Optional[pathlib.Path]:
  """A command's ROOT: ``flag`` (its --compilation_cache), else FLOWPP_JAX_COMPILATION_CACHE,
  else ``default_root``; None for ``off``."""
  value = flag if flag is not None else environ.get(ENV, '').strip()
  if value.lower() == OFF:
    return None
  return pathlib.Path(value).expanduser() if value else default_root(environ)


def enable(root=None) -> pathlib.Path:
  """Turns on jax's persistent compilation cache in this machine's folder under ``root``
  (default: ``default_root()``), for every program however quick to compile, and returns the
  folder. Changes jax's configuration for the whole process: the commands call it at their
  entry point, a library user once at the start. Raises OSError if the folder cannot be made;
  one that exists but is read-only serves the programs it holds."""
  import jax  # pylint: disable=g-import-not-at-top  (usage errors need no jax)
  description = machine()
  folder = machine_folder(root or default_root(), description)
  folder.mkdir(parents=True, exist_ok=True)
  label = folder / 'machine.json'
  if not label.exists():
    try:  # written once, atomically: a reader never sees half of it
      partial = folder / f'.machine.json.{os.getpid()}'
      partial.write_text(json.dumps(description, indent=1, sort_keys=True) + '\n')
      os.replace(partial, label)
    except OSError:
      pass  # a read-only folder: it still serves what it holds
  jax.config.update('jax_compilation_cache_dir', str(folder))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  return folder


def _zstd_decompress():
  """(decompress, its error) of Python 3.14's compression.zstd or the zstandard package, the
  ones jax compresses with; None with neither (jax then uses zlib)."""
  try:
    from compression import zstd  # pylint: disable=g-import-not-at-top
    return zstd.decompress, zstd.ZstdError
  except ImportError:
    pass
  try:
    import zstandard  # pylint: disable=g-import-not-at-top
    return zstandard.ZstdDecompressor().decompress, zstandard.ZstdError
  except ImportError:
    return None


def _complete(path: str) -> bool:
  """Whether a cache entry's compressed data is complete (both formats end with a check)."""
  with open(path, 'rb') as f:
    data = f.read()
  if data[:4] == b'\x28\xb5\x2f\xfd':  # zstd's frame magic
    zstd = _zstd_decompress()
    if zstd is None:
      return True  # written by a jax with zstd; this one cannot read it either way
    decompress, error = zstd
  else:
    decompress, error = zlib.decompress, zlib.error
  try:
    decompress(data)
    return True
  except error:
    return False


def remove_damaged(folder) -> int:
  """Removes the entries of ``folder`` whose data is incomplete (a write cut short, by a full
  disk or a killed process): jax would fail to read them on every run and never rewrite
  them. Returns how many went; a read-only folder keeps them."""
  removed = 0
  for path in glob.glob(os.path.join(glob.escape(str(folder)), f'*{_ENTRY_SUFFIX}')):
    try:
      if not _complete(path):
        os.remove(path)
        removed += 1
    except OSError:
      pass
  return removed


def report_failures(folder, write: Callable[[str], None]) -> None:
  """For a command's whole process: jax's warnings about cache entries it could not read or
  write (a damaged entry, a read-only or full folder, a program built for other CPU features)
  become one line through ``write``, the first time; the rest are dropped. A failed read
  also removes the folder's damaged entries. Other warnings pass as before."""
  previous = warnings.showwarning
  reported = [False]

  def show(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    if 'persistent compilation cache' not in text and 'Cache value for key' not in text:
      return previous(message, category, filename, lineno, file, line)
    if reported[0]:
      return None
    reported[0] = True
    cause = text.split(': ', 1)[-1].splitlines()[0][:200]
    removed = remove_damaged(folder) if text.startswith('Error reading') else 0
    write(f'warning: the compilation cache in {folder} failed ({cause}); programs it cannot '
          f'give or keep are compiled afresh'
          + (f' (removed {removed} damaged entries)' if removed else ''))
    return None
  warnings.showwarning = show
