"""The commands' compilation cache (flowpp_jax/runtime/compile_cache.py): one folder per
machine, programs loaded instead of compiled, and a cache that cannot hurt. Each command runs
``python -m flowpp_jax.compress`` on a digits:tiny workdir with XDG_CACHE_HOME in tmp_path and
must give the bytes (or images) of a run without any cache: a damaged, unloadable, read-only
or shared cache costs at most one warning line, and never a traceback."""
import contextlib
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from flowpp_jax.data import datasets
from flowpp_jax.runtime import compile_cache
from conftest import ROOT, initialised_workdir

CPUINFO = '''processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
stepping\t: 1
cpu MHz\t\t: {mhz}
flags\t\t: fpu sse2 avx avx2 {extra}
core id\t\t: {n}
'''


def cpuinfo(extra='avx512f', cores=2):
  return '\n'.join(CPUINFO.format(n=n, mhz=2000 + 37 * n, extra=extra) for n in range(cores))


def test_each_machine_gets_its_own_folder():
  folder = lambda info, flags='': compile_cache.machine_folder(
      '/c', compile_cache.machine(info, {'XLA_FLAGS': flags}))
  here = folder(cpuinfo())
  assert folder(cpuinfo(cores=4)) == here  # per-core fields (MHz, ids) are not the machine's
  assert folder(cpuinfo(extra='')) != here  # no AVX-512: another folder
  assert folder(cpuinfo(), '--xla_cpu_max_isa=AVX2') != here
  assert folder('') != here and folder('') == folder('')  # no /proc/cpuinfo: the processor
  assert here.parent.as_posix() == '/c' and '-jax' in here.name


def test_the_root_is_the_flag_then_the_environment_then_the_user_cache():
  env = {'XDG_CACHE_HOME': '/x', compile_cache.ENV: '/e'}
  assert str(compile_cache.chosen_root('/f', env)) == '/f'
  assert str(compile_cache.chosen_root(None, env)) == '/e'
  assert str(compile_cache.chosen_root(None, {'XDG_CACHE_HOME': '/x'})) == '/x/flowpp_jax/xla'
  assert compile_cache.chosen_root('off', env) is None
  assert compile_cache.chosen_root(None, {compile_cache.ENV: 'OFF'}) is None
  assert str(compile_cache.chosen_root(None, {})).endswith('.cache/flowpp_jax/xla')


@pytest.fixture(scope='module')
def job(tmp_path_factory):
  """(workdir, images .npy, the file a run without cache writes)."""
  root = tmp_path_factory.mktemp('cache_job')
  initialised_workdir(root / 'run')
  np.save(root / 'images.npy', np.asarray(datasets.load_split('digits', 'test')[np.arange(3)]))
  result = compress(root / 'run', root, 'encode', root / 'images.npy', root / 'fresh.fppz',
                    cache='off')
  assert result.returncode == 0, result.stderr[-3000:]
  return root / 'run', root / 'images.npy', (root / 'fresh.fppz').read_bytes()


def compress(workdir, xdg, *args, cache=None, xla_flags=None, background=False):
  """The command with the user cache in ``xdg`` (none of the suite's own cache settings)."""
  env = {k: v for k, v in os.environ.items()
         if k not in (compile_cache.JAX_ENV, compile_cache.ENV)}
  env.update(JAX_PLATFORMS='cpu', XDG_CACHE_HOME=str(xdg))
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  argv = [sys.executable, '-m', 'flowpp_jax.compress', f'--workdir={workdir}', '--batch_size=2',
          *([f'--compilation_cache={cache}'] if cache else []), *map(str, args)]
  if background:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def folders(xdg):
  return sorted((xdg / 'flowpp_jax' / 'xla').iterdir())


def entries(folder):
  return sorted(folder.glob('*-cache'))


def warnings_of(result):
  """The command's warning lines; it must have worked, without a traceback."""
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return [line for line in result.stderr.splitlines() if 'warning' in line.lower()]


def encode_into(job, xdg, name, **kwargs):
  workdir, images, fresh = job
  out = xdg / name
  result = compress(workdir, xdg, 'encode', images, out, **kwargs)
  lines = warnings_of(result)
  assert out.read_bytes() == fresh
  return lines


def test_a_second_process_loads_every_program_and_codes_the_same_bits(job, tmp_path):
  workdir, images, _ = job
  assert encode_into(job, tmp_path, 'first.fppz') == []
  [folder] = folders(tmp_path)
  made = entries(folder)
  assert len(made) > 10
  assert json.loads((folder / 'machine.json').read_text())['cpu']
  assert encode_into(job, tmp_path, 'second.fppz') == []
  assert entries(folder) == made  # nothing compiled again
  # Decoding with the cached programs and without any cache gives the images back.
  for cache in (None, 'off'):
    back = tmp_path / f'back_{cache}.npy'
    result = compress(workdir, tmp_path, 'decode', tmp_path / 'second.fppz', back, cache=cache)
    assert warnings_of(result) == []
    np.testing.assert_array_equal(np.load(back), np.load(images))
  made = entries(folder)  # decoding's programs too
  # Other XLA flags: another folder, the first one untouched.
  flags = os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false'
  assert encode_into(job, tmp_path, 'flags.fppz', xla_flags=flags) == []
  assert len(folders(tmp_path)) == 2 and entries(folder) == made


def test_damaged_entries_cost_one_line_and_are_made_again(job, tmp_path):
  encode_into(job, tmp_path, 'first.fppz')
  [folder] = folders(tmp_path)
  for entry in entries(folder):  # writes cut short: a full disk, a killed process
    entry.write_bytes(entry.read_bytes()[:len(entry.read_bytes()) // 2])
  [line] = encode_into(job, tmp_path, 'damaged.fppz')
  assert line.startswith('warning: the compilation cache') and 'damaged entries' in line
  assert encode_into(job, tmp_path, 'healed.fppz') == []


def test_programs_that_do_not_load_cost_one_line(job, tmp_path):
  """XLA:CPU refuses a program built for CPU features it does not see; its entry is complete,
  so it stays, and each run says so once."""
  encode_into(job, tmp_path, 'first.fppz')
  [folder] = folders(tmp_path)
  for entry in entries(folder):
    entry.write_bytes(zlib.compress(b'\0' * 64))
  for run in ('refused.fppz', 'refused_again.fppz'):
    [line] = encode_into(job, tmp_path, run)
    assert line.startswith('warning: the compilation cache') and 'damaged' not in line


@contextlib.contextmanager
def read_only(folder):
  """``folder`` and its files unwritable, also for root (immutable; skips where that is not
  possible)."""
  if os.geteuid() != 0:
    modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
    for path in modes:
      path.chmod(modes[path] & ~0o222)
    undo = lambda: [path.chmod(mode) for path, mode in modes.items()]
  else:
    if subprocess.run(['chattr', '+i', str(folder)], capture_output=True).returncode:
      pytest.skip('cannot make a folder read-only for root here (chattr +i)')
    undo = lambda: subprocess.run(['chattr', '-i', str(folder)], check=True)
  try:
    yield
  finally:
    undo()


def test_a_read_only_cache_serves_what_it_holds(job, tmp_path):
  workdir, images, _ = job
  encode_into(job, tmp_path, 'first.fppz')
  [folder] = folders(tmp_path)
  made = entries(folder)
  (tmp_path / 'out').mkdir()
  with read_only(folder):
    result = compress(workdir, tmp_path, 'decode', tmp_path / 'first.fppz',
                      tmp_path / 'out' / 'back.npy')
    assert len(warnings_of(result)) <= 1  # decoding may need programs it cannot keep
    assert encode_into(job, tmp_path / 'out', 'again.fppz', cache=folder.parent) == []
  assert entries(folder) == made
  np.testing.assert_array_equal(np.load(tmp_path / 'out' / 'back.npy'), np.load(images))


def test_processes_filling_one_cache_at_once_both_work(job, tmp_path):
  workdir, images, fresh = job
  runs = [compress(workdir, tmp_path, 'encode', images, tmp_path / f'{i}.fppz',
                   background=True) for i in range(2)]
  for i, run in enumerate(runs):
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0 and 'Traceback' not in stderr, stderr[-3000:]
    assert len([line for line in stderr.splitlines() if 'warning' in line.lower()]) <= 1
    assert (tmp_path / f'{i}.fppz').read_bytes() == fresh


def test_a_cache_folder_that_cannot_be_made_costs_one_line(job, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  [line] = encode_into(job, tmp_path, 'out.fppz', cache=tmp_path / 'file' / 'cache')
  assert line.startswith('warning: no compilation cache')
