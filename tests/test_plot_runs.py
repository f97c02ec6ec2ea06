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


def write_final(workdir, bpd, bpd_iw, k=64, wall_s=None):
  """The eval.json that training's end and --mode=eval write, and launch/ablations.sh's wall_s."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'eval.json').write_text(json.dumps(
      {'step': 800, 'bpd': bpd, 'bpd_iw': bpd_iw, 'num_examples': 360, 'num_iw_samples': k,
       'split': 'test'}))
  if wall_s is not None:
    (workdir / 'wall_s').write_text(f'{wall_s}\n')
  return workdir


def test_table_of_final_scores(tmp_path):
  a = [write_final(tmp_path / f'flowpp_s{i}', e, w, wall_s=t)
       for i, (e, w, t) in enumerate([(1.84, 1.80, 230), (1.86, 1.81, 250), (1.85, 1.83, 240)])]
  b = [write_final(tmp_path / f'affine_s{i}', e, w)
       for i, (e, w) in enumerate([(1.97, 1.90), (1.99, 1.94)])]
  out = tmp_path / 'table.md'
  result = run(*a, *b, f'--table={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == out.read_text()
  header, rule, first, second = out.read_text().splitlines()
  assert header.split(' | ')[4:6] == ['IW bound, K = 64', 'ELBO gap to flowpp']
  assert first == ('| flowpp | 3 | 800 | 1.8500 ± 0.0100 | 1.8133 ± 0.0153 | reference | '
                   'reference | 4.0 min |')
  # The gap's standard error, computed here from the definition.
  gap = np.mean([1.97, 1.99]) - np.mean([1.84, 1.86, 1.85])
  error = np.sqrt(np.var([1.97, 1.99], ddof=1) / 2 + np.var([1.84, 1.86, 1.85], ddof=1) / 3)
  cells = [cell.strip() for cell in second.split('|')[1:-1]]
  assert cells[:3] == ['affine', '2', '800'] and cells[-1] == ''
  assert cells[5] == f'{gap:+.4f} ± {error:.4f}' == '+0.1300 ± 0.0115'


def test_table_refuses_what_it_cannot_compare(tmp_path):
  a = write_final(tmp_path / 'a_s0', 1.8, 1.7, k=16)
  b = write_final(tmp_path / 'b_s0', 1.9, 1.8, k=64)
  out = tmp_path / 'table.md'
  assert_one_error_line(run(a, b, f'--table={out}'), 'the runs were evaluated with different K')
  (tmp_path / 'c_s0').mkdir()
  assert_one_error_line(run(a, tmp_path / 'c_s0', f'--table={out}'), 'has no final evaluation')
  (b / 'wall_s').write_text('soon')
  assert_one_error_line(run(b, f'--table={out}'), 'holds no number of seconds')
  assert not out.exists()
