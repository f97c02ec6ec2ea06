"""The reference architectures: parameter counts equal the official launchers' exactly, and
the command line's summary mode reports them (and rejects bad input) as documented."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from flowpp_jax.tools import summary
from conftest import ROOT, load_config

OFFICIAL = {'cifar10': 31_443_440, 'imagenet32': 168_955_724, 'imagenet64': 73_489_960}


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_parameter_count_equals_official(name):
  _, totals = summary.summary_rows(load_config(name).model)
  assert totals['num_params'] == OFFICIAL[name]


def test_cifar10_count_by_hand():
  """The CIFAR-10 total rebuilt from the architecture, so a miscount cannot hide in both
  the model and the summary."""
  def coupling(h, w, c, f=96, blocks=10, k=32, context=0):
    gated = 9 * 2 * f * f + f + (2 * f * 2 * f + 2 * f) + (2 * context * f + f if context else 0)
    attn = (f * 3 * f + 3 * f) + (f * 2 * f + 2 * f)
    block = gated + attn + 4 * f                           # two layer norms
    out = 9 * f * c * (2 + 3 * k) + c * (2 + 3 * k)
    return h * w * f + (9 * c * f + f) + blocks * block + out
  def step(h, w, c, **kw):                                 # Norm + Pointwise on both halves
    return 2 * (2 * h * w * c) + 2 * c * c + coupling(h, w, c, **kw)
  main = 4 * step(32, 16, 3) + 2 * step(16, 16, 6) + 3 * step(16, 8, 12)
  context = (9 * 6 * 32 + 32) + 3 * ((9 * 64 * 32 + 32) + (9 * 64 * 64 + 64))
  dequant = context + 4 * step(32, 16, 3, blocks=2, context=32)
  _, totals = summary.summary_rows(load_config('cifar10').model)
  assert (totals['main_flow'], totals['dequantizer']) == (main, dequant)


def _run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.main', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_summary_mode_prints_table_and_json():
  result = _run_main('--config=configs/cifar10.py', '--mode=summary')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert json.loads(lines[-1])['num_params'] == OFFICIAL['cifar10']
  assert sum('MixLogisticCoupling' in line for line in lines) == 13


@pytest.mark.parametrize('override,message', [
    ('--config.model.dropout=1.5', 'model.dropout'),
    ('--config.model.nonsense=1', 'unknown config field'),
    ('--config.model.main.layout=checker4x', 'layout'),
    ('--config.model.dropout=abc', 'could not convert'),
])
def test_bad_config_gives_one_error_line(override, message):
  result = _run_main('--config=configs/cifar10.py', '--mode=summary', override)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines


def test_missing_config_file_gives_one_error_line():
  result = _run_main('--config=configs/no_such_config.py', '--mode=summary')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
