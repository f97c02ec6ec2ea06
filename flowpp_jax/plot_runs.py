"""Learning curves of any set of runs in one PNG, bits/dim against training step, and a table
of their final scores.

  python -m flowpp_jax.plot_runs WORKDIR [WORKDIR ...] --out=curves.png [--metric=eval_bpd]
  python -m flowpp_jax.plot_runs WORKDIR [WORKDIR ...] --table=table.md

Reads each WORKDIR/metrics.jsonl (what --mode=train writes). Runs whose folder names differ
only by a trailing seed (``digits_affine_s0``, ``digits_affine-seed1``, ...) form one curve: a
thin line per run and their mean, thick, in one colour; any other run is a curve of its own.
``--metric`` picks the row field: ``eval_bpd`` (the periodic test ELBO with the EMA parameters,
the default) or ``train_bpd`` (the training batches' bits/dim). Writes an 800x500 PNG, replacing
the file at --out whole. Needs matplotlib: pip install -e '.[plot]'.

``--table`` prints, and writes as Markdown, each curve's final evaluation (WORKDIR/eval.json,
written at the end of training and by --mode=eval): the test ELBO and importance-weighted bound
as mean +- standard deviation over its runs, the gap of each to the first curve named with its
standard error, and the mean wall time per run where a run's WORKDIR/wall_s holds it
(launch/ablations.sh writes it). Bad input prints one ``error: ...`` line and exits with
status 2.
"""
import collections
import io
import json
import re

from absl import flags
import numpy as np

from flowpp_jax.runtime import cli, fileio

SEED_SUFFIX = re.compile(r'[_-](s|seed)[0-9]+$')
SIZE = (800, 500)  # pixels: 8 x 5 inches at 100 dpi
METRICS = {'eval_bpd': 'test bits/dim (ELBO, EMA parameters)',
           'train_bpd': 'training bits/dim'}

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _OUT = flags.DEFINE_string('out', None, 'The PNG to write.')
  _METRIC = flags.DEFINE_enum('metric', 'eval_bpd', list(METRICS), 'The row field to plot.')
  _TITLE = flags.DEFINE_string('title', '', 'A title for the figure.')
  _TABLE = flags.DEFINE_string('table', None, 'A Markdown file for the table of final scores.')


def curve_name(workdir: str) -> str:
  """The curve a run belongs to: its folder's name without a trailing seed."""
  return SEED_SUFFIX.sub('', fileio.path(workdir).name)


def read_curve(workdir: str, metric: str):
  """(steps, values) of ``metric`` in WORKDIR/metrics.jsonl, in step order. Raises
  ValueError when the file is missing or holds no such row."""
  path = fileio.path(workdir) / 'metrics.jsonl'
  if not path.exists():
    raise ValueError(f'{path} not found: is {workdir} the --workdir of a training run?')
  points = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      row = json.loads(line) if line.strip() else {}
    except ValueError:
      raise ValueError(f'{path}, line {number}, is not JSON') from None
    if metric in row and np.isfinite(row[metric]):
      points[int(row['step'])] = float(row[metric])
  if not points:
    raise ValueError(f'{path} has no {metric} rows (--metric=train_bpd plots the training '
                     'loss of a run that never evaluated)')
  steps = sorted(points)
  return np.array(steps), np.array([points[s] for s in steps])


def plot(curves, metric: str, title: str = '') -> bytes:
  """{curve name: [(steps, values) per run]} -> the PNG's bytes. Runs of one curve share a
  colour; their mean over the steps all of them logged is drawn thick."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100)
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  for index, (name, runs) in enumerate(curves.items()):
    colour = f'C{index % 10}'
    if len(runs) == 1:
      axes.plot(*runs[0], color=colour, linewidth=0.8, label=name)
      continue
    for steps, values in runs:
      axes.plot(steps, values, color=colour, linewidth=0.8, alpha=0.45)
    by_step = [dict(zip(steps.tolist(), values)) for steps, values in runs]
    common = sorted(set.intersection(*map(set, by_step)))
    mean = [np.mean([run[step] for run in by_step]) for step in common]
    axes.plot(common, mean, color=colour, linewidth=2.2, label=f'{name} (mean of {len(runs)})')
  axes.set_xlabel('training step')
  axes.set_ylabel(METRICS[metric])
  axes.grid(alpha=0.3)
  axes.legend()
  if title:
    axes.set_title(title)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  return buffer.getvalue()


def read_final(workdir: str) -> dict:
  """WORKDIR/eval.json, plus 'wall_s' where WORKDIR/wall_s holds it. Raises ValueError when
  there is no evaluation."""
  path = fileio.path(workdir) / 'eval.json'
  if not path.exists():
    raise ValueError(f'{path} not found: {workdir} has no final evaluation (train to the end, '
                     'or run --mode=eval on it)')
  try:
    final = json.loads(path.read_text())
    final = {key: final[key] for key in ('step', 'bpd', 'bpd_iw', 'num_iw_samples')}
  except (ValueError, KeyError, TypeError):
    raise ValueError(f'{path} is not an evaluation that --mode=eval writes') from None
  wall = fileio.path(workdir) / 'wall_s'
  if wall.exists():
    try:
      final['wall_s'] = float(wall.read_text())
    except ValueError:
      raise ValueError(f'{wall} holds no number of seconds') from None
  return final


def _spread(values) -> tuple:
  """(mean, sample standard deviation; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  return values.mean(), (values.std(ddof=1) if len(values) > 1 else 0.0)


def _plus_minus(mean: float, spread: float, count: int, sign: bool = False) -> str:
  text = f'{mean:+.4f}' if sign else f'{mean:.4f}'
  return f'{text} ± {spread:.4f}' if count > 1 else text


def table(finals) -> str:
  """{curve name: [final evaluation per run]} -> a Markdown table. Gaps are to the first curve:
  the difference of the means, with its standard error sqrt(s_a^2 / n_a + s_b^2 / n_b). Raises
  ValueError when the runs' bounds used different K."""
  ks = sorted({f['num_iw_samples'] for runs in finals.values() for f in runs})
  if len(ks) > 1:
    raise ValueError(f'the runs were evaluated with different K ({ks}): rerun --mode=eval with '
                     'one --config.eval.num_iw_samples')
  first = next(iter(finals))
  lines = [f'| run | seeds | steps | test ELBO | IW bound, K = {ks[0]} | ELBO gap to {first} '
           '| IW gap | wall per run |', '|---|---|---|---|---|---|---|---|']
  for name, runs in finals.items():
    steps = '/'.join(str(step) for step in sorted({f['step'] for f in runs}))
    cells = [name, str(len(runs)), steps]
    cells += [_plus_minus(*_spread([f[key] for f in runs]), len(runs))
              for key in ('bpd', 'bpd_iw')]
    for key in ('bpd', 'bpd_iw'):
      if name == first:
        cells.append('reference')
        continue
      (mean, sd), (mean0, sd0) = (_spread([f[key] for f in finals[n]]) for n in (name, first))
      error = np.sqrt(sd**2 / len(runs) + sd0**2 / len(finals[first]))
      cells.append(_plus_minus(mean - mean0, error, min(len(runs), len(finals[first])), sign=True))
    walls = [f['wall_s'] for f in runs if 'wall_s' in f]
    cells.append(f'{np.mean(walls) / 60:.1f} min' if walls else '')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  workdirs = argv[1:]
  if not workdirs or not (_OUT.value or _TABLE.value):
    cli.fail('usage: python -m flowpp_jax.plot_runs WORKDIR [WORKDIR ...] --out=curves.png '
             '[--table=table.md]')
  if _OUT.value:
    try:
      import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      cli.fail("plotting needs matplotlib: pip install -e '.[plot]'")
  curves, finals = collections.defaultdict(list), collections.defaultdict(list)
  try:
    for workdir in workdirs:  # everything is read before anything is written
      if _OUT.value:
        curves[curve_name(workdir)].append(read_curve(workdir, _METRIC.value))
      if _TABLE.value:
        finals[curve_name(workdir)].append(read_final(workdir))
    if _OUT.value:
      fileio.write_bytes(_OUT.value, plot(dict(curves), _METRIC.value, _TITLE.value))
      runs = sum(len(r) for r in curves.values())
      print(f'{len(curves)} curves of {runs} runs ({_METRIC.value}) -> {_OUT.value}')
    if _TABLE.value:
      text = table(dict(finals))
      fileio.write_text(_TABLE.value, text)
      print(text, end='')
  except ValueError as e:
    cli.fail(str(e).splitlines()[0])
  except OSError as e:
    cli.fail(f'{e.filename or _OUT.value or _TABLE.value}: {e.strerror or e}')


if __name__ == '__main__':
  cli.run(main, required=None, compiles=False)
