"""python -m flowpp_jax.tools.codec_drift on a tiny model: a record, then the same images
coded under another instruction set following it, whose Gaussians differ from the record's by
float64 rounding only and, once snapped and the record followed, not at all."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, assert_one_error_line, initialised_workdir
from flowpp_jax.data import datasets


def run(*args, xla_flags=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if xla_flags is not None:
    env.update(XLA_FLAGS=xla_flags, JAX_ENABLE_COMPILATION_CACHE='false')
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.tools.codec_drift', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_another_instruction_set_drifts_by_rounding_only(tmp_path):
  workdir = tmp_path / 'run'
  initialised_workdir(workdir)
  images = tmp_path / 'images.npy'
  np.save(images, np.asarray(datasets.load_split('digits', 'test')[np.arange(3)]))
  common = (f'--workdir={workdir}', str(images))
  first = run(*common, str(tmp_path / 'ref.npz'), '--count=2')
  assert first.returncode == 0, first.stderr[-3000:]
  other = run(*common, str(tmp_path / 'avx.npz'), '--count=2',
              f'--reference={tmp_path / "ref.npz"}', xla_flags='--xla_cpu_max_isa=AVX')
  assert other.returncode == 0, other.stderr[-3000:]
  figures = json.loads(other.stdout.strip().splitlines()[-1])
  assert figures['gaussians'] > 1000  # 2 images of 64 values, each coded ~46 times
  assert figures['max_mean_difference_stds'] < 1e-9
  assert figures['max_std_relative_difference'] < 1e-12
  assert figures['mismatched_after_the_record'] == 0


def test_bad_arguments_are_refused_in_one_line(tmp_path):
  assert_one_error_line(run('--workdir=x', 'only_one.npy'), 'usage')
  assert_one_error_line(run('--workdir=x', 'a.npy', 'b.npz', '--count=0'), '--count')
  assert_one_error_line(run(f'--workdir={tmp_path}', str(tmp_path / 'none.npy'),
                            str(tmp_path / 'b.npz')), 'none.npy')
  (tmp_path / 'old.npz').write_bytes(b'kept')
  assert_one_error_line(run('--workdir=x', 'a.npy', str(tmp_path / 'old.npz')), 'overwritten')
  assert (tmp_path / 'old.npz').read_bytes() == b'kept'
