"""python -m flowpp_jax.bench on the tiny digits config, and the table of device peaks."""
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from flowpp_jax.runtime import cpu_devices
from flowpp_jax.runtime import accelerators
from conftest import ROOT

TINY = '--config=configs/digits.py:tiny'
# The tiny digits model with one coupling and uniform dequantization: the benchmark's code
# paths do not depend on the layers, and this halves the run's compile time. Both runs use the
# same programs (config and --sample_num): the compile-only run then loads them from the
# session's persistent compilation cache (conftest) instead of compiling them again.
OVERRIDES = ('--config.model.main.layout=checker1', '--config.model.dequant.kind=uniform')
ARGS = (TINY, *OVERRIDES, '--sample_num=8')
# Figures a full run measures, all finite and > 0 (seconds, images/s, FLOPs, bytes, ratios).
POSITIVE = ('train_lower_s', 'train_compile_s', 'train_step_s', 'train_images_per_s',
            'train_flops_per_image', 'forward_flops_per_image', 'train_flops_per_s',
            'train_memory_bytes', 'train_memory_argument_bytes', 'train_memory_output_bytes',
            'train_memory_temp_bytes', 'eval_images_per_s', 'forward_s', 'sample_s',
            'sample_to_forward_ratio')
COMPILE_FIGURES = ('train_lower_s', 'train_compile_s', 'train_flops_per_image',
                   'forward_flops_per_image', 'train_memory_bytes', 'train_memory_temp_bytes')
# Do not apply on a CPU: no published peak, no runtime memory statistics.
NOT_APPLICABLE_ON_CPU = ('mfu', 'peak_flops_per_s_per_device', 'peak_memory_bytes')


def bench(*args, env_add=None):
  # conftest's XLA flags and compilation cache reach the subprocess through the environment.
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env_add or {}))
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.bench', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def table_and_figures(result):
  assert result.returncode == 0, result.stderr[-3000:]
  *table, last = result.stdout.strip().splitlines()
  return table, json.loads(last)


@pytest.fixture(scope='module')
def full_run():
  return table_and_figures(bench(*ARGS, '--steps=2'))


def test_full_run_reports_every_figure(full_run):
  table, figures = full_run
  for key in POSITIVE:
    assert math.isfinite(figures[key]) and figures[key] > 0, key
  assert figures['train_memory_alias_bytes'] >= 0
  assert figures['train_flops_per_image'] > figures['forward_flops_per_image']  # + backward
  assert figures['train_images_per_s'] == pytest.approx(16 / figures['train_step_s'])
  assert 0 <= figures['reconstruction_max_abs_error'] < 1e-3
  assert {key: figures[key] for key in NOT_APPLICABLE_ON_CPU} == dict.fromkeys(
      NOT_APPLICABLE_ON_CPU)
  assert figures['config'] == 'configs/digits.py:tiny'
  assert figures['config_overrides'] == list(OVERRIDES)
  assert (figures['device_kind'], figures['platform']) == ('cpu', 'cpu')
  # One device per core, up to what divides the batch sizes (16 and 20).
  assert figures['device_count'] == cpu_devices.divisor_count(cpu_devices.usable_cores(),
                                                              (16, 20))
  assert figures['jax_version'] == jax.__version__
  assert (figures['batch_size'], figures['compute_dtype'], figures['steps'],
          figures['sample_num'], figures['compile_only']) == (16, 'float32', 2, 8, False)
  assert figures['attention_kernel'] == 'flowpp_jax'  # cuDNN's is for GPUs in 16 bits
  # stdout is the table, then the JSON: progress went to stderr.
  mfu_row = next(row for row in table if 'utilisation' in row)
  assert mfu_row.split()[-2:] == ['n/a', '%']
  assert not any(row.startswith('[') for row in table)


def test_compile_only_runs_nothing():
  table, figures = table_and_figures(bench(*ARGS, '--compile_only'))
  for key in COMPILE_FIGURES:
    assert math.isfinite(figures[key]) and figures[key] > 0, key
  assert figures['compile_only'] is True
  assert not {'train_step_s', 'eval_images_per_s', 'sample_s', 'mfu',
              'reconstruction_max_abs_error'} & set(figures)
  assert not any('throughput' in row for row in table)


@pytest.mark.parametrize('flag,env_add', [
    ('--config.model.compute_dtype=float16', None), ('--steps=0', None),
    ('--workdir=/tmp/unused', None), ('--steps=1', {'FLOWPP_CPU_DEVICES': '0'})])
def test_bad_input_is_one_error_line(flag, env_add):
  result = bench(TINY, flag, env_add=env_add)
  assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines[-5:]
  assert not result.stdout


@pytest.mark.parametrize('kind, dtype, tflops', [
    ('TPU v2', 'float32', 22.5), ('TPU v3', 'bfloat16', 61.5),
    ('TPU v4', 'bfloat16', 275), ('TPU v5 lite', 'bfloat16', 197), ('TPU v5e', 'float32', 197),
    ('TPU v5', 'bfloat16', 459), ('TPU v5p', 'bfloat16', 459), ('TPU v6 lite', 'bfloat16', 918),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312), ('NVIDIA A100-PCIE-40GB', 'float32', 156),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.5), ('NVIDIA H100 80GB HBM3', 'float32', 494.5),
    ('NVIDIA H100 PCIe', 'bfloat16', 756.5), ('NVIDIA H100 NVL', 'float32', 417.5),
    ('NVIDIA H200', 'bfloat16', 989.5), ('NVIDIA H200 NVL', 'bfloat16', 835.5),
])
def test_known_devices_have_their_published_peak(kind, dtype, tflops):
  assert accelerators.peak_flops(kind, dtype) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize('kind', ['cpu', 'TPU v4 lite', 'TPU v7', 'NVIDIA GH200 480GB',
                                  'NVIDIA H800', 'Tesla V100-SXM2-16GB', ''])
def test_unknown_devices_have_no_peak_and_no_mfu(kind):
  assert accelerators.peak_flops(kind, 'bfloat16') is None
  assert accelerators.mfu(1e12, kind, 'bfloat16', 1) is None


def test_mfu_divides_by_every_device():
  peak = accelerators.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16')
  assert accelerators.mfu(peak, 'NVIDIA H100 80GB HBM3', 'bfloat16', 4) == pytest.approx(0.25)


def test_flops_of_scanned_remat_model_are_the_plain_models(full_run):
  """XLA counts a scan's body once and remat adds recomputation: the benchmark counts FLOPs
  on the plain program instead, so both options report the plain model's FLOPs (up to the
  difference between a lowered and a compiled program's analysis: 2% on digits, 6% on this
  tiny model)."""
  _, plain = full_run
  _, figures = table_and_figures(bench(*ARGS, '--compile_only', '--config.model.scan_layers=True',
                                       '--config.model.remat=True'))
  for key in ('train_flops_per_image', 'forward_flops_per_image'):
    assert figures[key] == pytest.approx(plain[key], rel=0.1), key
