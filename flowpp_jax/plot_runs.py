"""Learning curves of any set of runs in one PNG: bits/dim against training step.

  python -m flowpp_jax.plot_runs WORKDIR [WORKDIR ...] --out=curves.png [--metric=eval_bpd]

Reads each WORKDIR/metrics.jsonl (what --mode=train writes). Runs whose folder names differ
only by a trailing seed (``digits_affine_s0``, ``digits_affine-seed1``, ...) form one curve: a
thin line per run and their mean, thick, in one colour; any other run is a curve of its own.
``--metric`` picks the row field: ``eval_bpd`` (the periodic test ELBO with the EMA parameters,
the default) or ``train_bpd`` (the training batches' bits/dim). Writes an 800x500 PNG, replacing
the file at --out whole. Needs matplotlib: pip install -e '.[plot]'. Bad input prints one
``error: ...`` line and exits with status 2.
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


def main(argv):
  workdirs = argv[1:]
  if not workdirs or not _OUT.value:
    cli.fail('usage: python -m flowpp_jax.plot_runs WORKDIR [WORKDIR ...] --out=curves.png')
  try:
    import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    cli.fail("plotting needs matplotlib: pip install -e '.[plot]'")
  curves = collections.defaultdict(list)
  try:
    for workdir in workdirs:
      curves[curve_name(workdir)].append(read_curve(workdir, _METRIC.value))
    fileio.write_bytes(_OUT.value, plot(dict(curves), _METRIC.value, _TITLE.value))
  except ValueError as e:
    cli.fail(str(e).splitlines()[0])
  except OSError as e:
    cli.fail(f'{e.filename or _OUT.value}: {e.strerror or e}')
  runs = sum(len(r) for r in curves.values())
  print(f'{len(curves)} curves of {runs} runs ({_METRIC.value}) -> {_OUT.value}')


if __name__ == '__main__':
  cli.run(main, required=None)
