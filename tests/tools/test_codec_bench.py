"""python -m flowpp_jax.tools.codec_bench on the tiny digits config: an exact round trip, the
codelength near the ELBO at the coder's noise, every kind of layer accounted for near its own
log-det, and bad flags refused in one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_one_error_line

TINY = '--config=configs/digits.py:tiny'


def run(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.tools.codec_bench', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_four_images_in_two_batches():
  result = run(TINY, '--images=4', '--batch_size=2')
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['exact'] is True
  assert 'round trip exact: True' in result.stdout
  assert len(figures['batch_overheads']) == 2
  assert abs(figures['overhead']) < 0.01  # measured +0.12% (4 images)
  dims = 4 * 8 * 8
  assert figures['file_bytes'] == pytest.approx(figures['file_bpd'] * dims / 8)
  for key in ('encode_s_per_image', 'decode_s_per_image', 'encode_first_batch_s', 'init_s'):
    assert figures[key] > 0, key
  layers = {(row['flow'], row['layer']): row for row in figures['layers']}
  assert set(layers) == {(flow, layer) for flow in ('dequantizer', 'main_flow')
                         for layer in ('Norm', 'Pointwise', 'MixLogisticCoupling')} | {
                             ('dequantizer', 'Sigmoid'), ('main_flow', 'LogitPreprocess')}
  assert layers['main_flow', 'LogitPreprocess']['calls'] == 1
  assert layers['dequantizer', 'Sigmoid']['calls'] == 1
  for row in figures['layers']:
    # Each kind's bits are its -log2 |det J| up to the local coding's overhead.
    assert abs(row['overhead_bpd']) < 0.05, row  # measured up to 0.028 (the Sigmoid, 256 dims)
    np.testing.assert_allclose(row['coded_bpd'] - row['neg_log2_det_bpd'],
                               row['overhead_bpd'], atol=1e-9)


@pytest.mark.parametrize('args, fragment', [
    (('--images=1',), 'at least two batches'),
    (('--images=5', '--batch_size=2'), '--images must be a multiple of --batch_size'),
    (('--batch_size=0',), '--batch_size and --init_images must be >= 1'),
    (('--workdir=/tmp/x',), "Unknown command line flag 'workdir'"),
    (('--config.model.num_levels=1',), 'model.num_levels'),
])
def test_bad_flags_are_one_error_line(args, fragment):
  assert_one_error_line(run(TINY, *args), fragment)
