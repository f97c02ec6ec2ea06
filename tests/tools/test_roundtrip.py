"""python -m flowpp_jax.roundtrip: the inverse of a freshly initialised model, as printed."""
import json
import os
import subprocess
import sys

from conftest import ROOT, assert_one_error_line


def roundtrip(*args):
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.roundtrip', *args], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                        text=True, timeout=600)


def test_roundtrip_reports_a_tight_inverse():
  result = roundtrip('--config=configs/digits.py:tiny', '--batch=2', '--trials=2')
  assert result.returncode == 0, result.stderr[-3000:]
  worst = json.loads(result.stdout.strip().splitlines()[-1])
  # float32 at 17 levels: ~4e-6 measured; the encode margin is 0.5.
  assert 0 < worst['max_abs_error'] < 1e-4
  assert 0 <= worst['max_log_det_mismatch'] < 1e-3
  assert worst['decode_encode_exact'] is True
  assert sum(line.startswith('trial ') for line in result.stdout.splitlines()) == 2


def test_roundtrip_refuses_main_flags():
  assert_one_error_line(roundtrip('--config=configs/digits.py:tiny', '--mode=eval'),
                        "bad command line: Unknown command line flag 'mode'")
