"""The trainer on a folder of your own images, as a user runs it: train, resume after new files
arrive (the recorded split holds), eval and sample; bad data is one error line and an
untouched workdir."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from flowpp_jax.data import datasets
from conftest import ROOT, assert_one_error_line

# The tiny digits model on 8-bit files: 256 levels instead of digits' 17.
ARGS = ('--config=configs/digits.py:tiny', '--config.model.num_levels=256',
        '--config.eval.num_examples=0')


def main(workdir, folder, cache, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'flowpp_jax.main', *ARGS, f'--workdir={workdir}',
       f'--config.dataset=folder:{folder}', f'--config.data.cache_dir={cache}', *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def write_digits(folder, start, stop):
  """Digits start..stop-1 as 8-bit grayscale files, PNGs in one subfolder, JPEGs in another."""
  images = datasets.load_split('digits', 'train')[np.arange(start, stop)][..., 0]
  for i, image in zip(range(start, stop), images):
    path = folder / ('png' if i % 4 else 'jpeg') / f'{i:04d}.{"png" if i % 4 else "jpg"}'
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image.astype(np.float32) * 255 / 16).round().astype(np.uint8)).save(path)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  folder, cache, workdir = root / 'digits', root / 'cache', root / 'run'
  write_digits(folder, 0, 200)
  first = main(workdir, folder, cache)
  assert first.returncode == 0, first.stderr[-3000:]
  record = json.loads((workdir / 'data_split.json').read_text())
  write_digits(folder, 200, 260)  # new files: the resumed run must not see them
  resumed = main(workdir, folder, cache, '--config.num_train_steps=30')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  evaluated = main(workdir, folder, cache, '--mode=eval')
  sampled = main(workdir, folder, cache, '--mode=sample')
  return dict(workdir=workdir, record=record, first=first.stdout, resumed=resumed.stdout,
              eval=evaluated, sample=sampled)


def test_training_decodes_once_and_records_the_split(runs):
  record = runs['record']
  assert (len(record['train']), len(record['test'])) == (190, 10)
  assert '190 train, 10 test images; decoded 200 images' in runs['first']
  assert 'eval step 24: test' in runs['first']


def test_resume_reads_the_cache_and_keeps_the_split(runs):
  assert '190 train, 10 test images; 200 images from the cache' in runs['resumed']
  assert 'resuming from' in runs['resumed']
  assert json.loads((runs['workdir'] / 'data_split.json').read_text()) == runs['record']


def test_eval_and_sample_on_the_recorded_split(runs):
  result, sampled = runs['eval'], runs['sample']
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads((runs['workdir'] / 'eval.json').read_text())
  assert (scores['step'], scores['num_examples'], scores['split']) == (30, 10, 'test')
  assert 0 < scores['bpd_iw'] < 8 and 0 < scores['bpd'] < 8
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  png = runs['workdir'] / 'samples' / 'step_00000030_t1.png'
  assert png.exists() and Image.open(png).mode == 'L'


def test_bad_data_is_one_line_and_writes_nothing(tmp_path):
  folder = tmp_path / 'images'
  write_digits(folder, 0, 30)
  (folder / 'png' / '0001.png').write_bytes(b'not a png at all')
  workdir = tmp_path / 'run'
  result = main(workdir, folder, tmp_path / 'cache')
  assert_one_error_line(result, f'cannot read image {folder / "png" / "0001.png"}')
  assert not workdir.exists() and not any((tmp_path / 'cache').glob('*'))
