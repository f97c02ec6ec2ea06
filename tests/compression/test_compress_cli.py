"""python -m flowpp_jax.compress as users run it, on a workdir trained for 4 steps of
digits:tiny: a folder of PNGs to a file and back (as PNGs and as an array), progress lines,
and one error line with status 2 for every bad input, with nothing overwritten."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from flowpp_jax.data import datasets
from flowpp_jax.data import images as image_files
from conftest import ROOT, assert_one_error_line


def run(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """4 steps with checkpoints at 2 and 4: two models of one workdir."""
  path = tmp_path_factory.mktemp('compress') / 'run'
  result = run('flowpp_jax.main', '--config=configs/digits.py:tiny', f'--workdir={path}',
               '--config.num_train_steps=4', '--config.checkpoint_every_steps=2',
               '--config.eval_every_steps=100', '--config.sample_every_steps=100',
               '--config.eval.num_examples=20')
  assert result.returncode == 0, result.stderr[-3000:]
  return path


@pytest.fixture(scope='module')
def images():
  split = datasets.load_split('digits', 'test')
  return np.asarray(split[np.arange(5)])


@pytest.fixture(scope='module')
def encoded(workdir, images, tmp_path_factory):
  folder = tmp_path_factory.mktemp('pngs')
  names = [f'digit_{i}.png' for i in (4, 0, 3, 1, 2)]  # name order is not array order
  for name, image in zip(names, images):
    Image.fromarray(image[..., 0], 'L').save(folder / name)
  out = folder.parent / 'digits.fppz'
  result = run('flowpp_jax.compress', f'--workdir={workdir}', '--batch_size=2', 'encode',
               str(folder), str(out))
  assert result.returncode == 0, result.stderr[-3000:]
  return folder, out, result.stdout


def test_a_png_folder_round_trips_bit_for_bit(workdir, encoded, tmp_path):
  folder, out, stdout = encoded
  assert 'encoded 5/5 images' in stdout and 'images/s' in stdout and 'ETA' in stdout
  assert f'encoded 5 images into {out}' in stdout and 'bits/dim' in stdout
  result = run('flowpp_jax.compress', f'--workdir={workdir}', 'decode',
               str(out), str(tmp_path / 'back'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'decoded 5 images' in result.stdout
  back = sorted(p.name for p in (tmp_path / 'back').iterdir())
  assert back == sorted(p.name for p in folder.iterdir())
  for name in back:
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / 'back' / name)),
                                  np.asarray(Image.open(folder / name)))
  result = run('flowpp_jax.compress', f'--workdir={workdir}', 'decode',
               str(out), str(tmp_path / 'back.npy'))
  assert result.returncode == 0, result.stderr[-3000:]
  as_read, _ = image_files.read_images(str(folder), (8, 8, 1))
  np.testing.assert_array_equal(np.load(tmp_path / 'back.npy'), as_read)


def test_bad_input_gives_one_error_line_and_writes_nothing(workdir, encoded, tmp_path):
  folder, out, _ = encoded
  data = out.read_bytes()
  base = ['flowpp_jax.compress', f'--workdir={workdir}']
  cases = []
  (tmp_path / 'truncated').write_bytes(data[:-7])
  cases.append((['decode', str(tmp_path / 'truncated'), str(tmp_path / 'a.npy')],
                ['truncated or corrupted']))
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 4
  (tmp_path / 'flipped').write_bytes(bytes(flipped))
  cases.append((['decode', str(tmp_path / 'flipped'), str(tmp_path / 'b.npy')],
                ['truncated or corrupted']))
  cases.append((['--step=2', 'decode', str(out), str(tmp_path / 'c.npy')], ['another model']))
  np.save(tmp_path / 'wide.npy', np.zeros((2, 8, 4, 1), np.uint8))
  cases.append((['encode', str(tmp_path / 'wide.npy'), str(tmp_path / 'd')], ['shape']))
  np.save(tmp_path / 'float.npy', np.zeros((2, 8, 8, 1), np.float32))
  cases.append((['encode', str(tmp_path / 'float.npy'), str(tmp_path / 'e')], ['uint8']))
  cases.append((['decode', str(out), str(folder)], ['exists', 'nothing is overwritten']))
  cases.append((['encode', str(tmp_path / 'missing.npy'), str(tmp_path / 'f')], ['not found']))
  cases.append((['squeeze', str(out), str(tmp_path / 'g')], ['usage']))
  for args, fragments in cases:
    assert_one_error_line(run(*base, *args), *fragments)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'flipped', 'float.npy', 'truncated', 'wide.npy']
  assert out.read_bytes() == data
