"""python -m flowpp_jax.plot_runs: learning curves of workdirs' metrics.jsonl in one PNG."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import ROOT, assert_one_error_line
from flowpp_jax import plot_runs


def write_run(workdir, eval_bpd, steps=(200, 400, 600)):
  """A workdir's metrics.jsonl as --mode=train writes it: training rows, then eval rows."""
  workdir.mkdir(parents=True)
  rows = [{'step': s, 'train_bpd': 3.0 - s / 400, 'lr': 1e-3} for s in range(25, 625, 25)]
  rows += [{'step': s, 'eval_bpd': v} for s, v in zip(steps, eval_bpd)]
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return workdir


def run(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.plot_runs', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, **(env or {})))


def test_two_workdirs_make_a_png_of_the_stated_size(tmp_path):
  pytest.importorskip('matplotlib')
  a = write_run(tmp_path / 'digits_s0', [2.2, 1.9, 1.85])
  b = write_run(tmp_path / 'digits_affine', [2.3, 2.0, 1.95])
  out = tmp_path / 'curves.png'
  result = run(a, b, f'--out={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == f'2 curves of 2 runs (eval_bpd) -> {out}'
  with Image.open(out) as image:
    assert image.format == 'PNG' and image.size == plot_runs.SIZE
    pixels = np.asarray(image.convert('RGB'))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something was drawn
  assert run(a, b, f'--out={out}', '--metric=train_bpd').returncode == 0


def test_seeds_form_one_curve_and_their_mean():
  assert plot_runs.curve_name('runs/digits_affine_s2') == 'digits_affine'
  assert plot_runs.curve_name('runs/digits-seed10') == 'digits'
  assert plot_runs.curve_name('runs/digits_small') == 'digits_small'


def test_bad_input_is_one_error_line(tmp_path):
  good = write_run(tmp_path / 'run', [2.0, 1.9, 1.8])
  assert_one_error_line(run(tmp_path / 'absent', f'--out={tmp_path / "x.png"}'),
                        'metrics.jsonl not found')
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  (untrained / 'metrics.jsonl').write_text(json.dumps({'step': 25, 'train_bpd': 3.0}) + '\n')
  assert_one_error_line(run(untrained, f'--out={tmp_path / "x.png"}'), 'has no eval_bpd rows')
  assert_one_error_line(run(good), 'usage: python -m flowpp_jax.plot_runs')
  assert not (tmp_path / 'x.png').exists()


def test_without_matplotlib_the_error_names_the_extra(tmp_path):
  fake = tmp_path / 'no_mpl' / 'matplotlib'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text("raise ImportError('matplotlib is not installed')\n")
  good = write_run(tmp_path / 'run', [2.0, 1.9, 1.8])
  result = run(good, f'--out={tmp_path / "x.png"}', env={'PYTHONPATH': str(fake.parent)})
  assert_one_error_line(result, "plotting needs matplotlib: pip install -e '.[plot]'")
