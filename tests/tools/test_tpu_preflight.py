"""The pre-flight (python -m flowpp_jax.bench --target=TYPE --compile_only): accelerator
types (TPU slices and GPU machines), the batch search and the bounds everywhere; compiling
for a TPU slice where libtpu is installed (CI's [tpu] leg)."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from flowpp_jax import bench as bench_module
from flowpp_jax import preflight
from flowpp_jax.runtime import accelerators, gpu_targets, tpu_slices
from conftest import ROOT

# The tiny digits model with one coupling and uniform dequantization (as test_bench.py).
TINY = ('--config=configs/digits.py:tiny', '--config.model.main.layout=checker1',
        '--config.model.dequant.kind=uniform')


@pytest.mark.parametrize('name, topology, chips, hosts, devices', [
    ('v2-8', 'v2:2x2', 4, 1, 8),
    ('v3-32', 'v3:4x4', 16, 4, 32),
    ('v4-8', 'v4:2x2x1', 4, 1, 4),
    ('v4-16', 'v4:2x2x2', 8, 2, 8),
    ('v4-32', 'v4:2x2x4', 16, 4, 16),
    ('v4-64', 'v4:2x4x4', 32, 8, 32),
    ('v4-128', 'v4:4x4x4', 64, 16, 64),
    ('v5litepod-1', 'v5e:1x1', 1, 1, 1),
    ('v5litepod-8', 'v5e:2x4', 8, 1, 8),
    ('v5litepod-16', 'v5e:4x4', 16, 4, 16),
    ('v5p-8', 'v5p:2x2x1', 4, 1, 4),
    ('v6e-8', 'v6e:2x4', 8, 1, 8),
    ('v6e-64', 'v6e:8x8', 64, 16, 64),
])
def test_accelerator_types_map_to_cloud_tpu_topologies(name, topology, chips, hosts, devices):
  tpu = tpu_slices.parse(name)
  assert (tpu.topology, tpu.chips, tpu.hosts, tpu.devices) == (topology, chips, hosts, devices)
  assert tpu.chips_per_host * tpu.hosts == tpu.chips


def test_per_device_figures_split_a_chip_over_its_cores_on_v2_and_v3():
  v3, v4 = tpu_slices.parse('v3-8'), tpu_slices.parse('v4-8')
  assert v3.device_memory_bytes == 16 * 2**30 and v4.device_memory_bytes == 32 * 2**30
  assert v3.peak_flops_per_device == 61.5e12 and v4.peak_flops_per_device == 275e12


@pytest.mark.parametrize('name', ['v4-6', 'v4-4', 'v7-8', 'v5litepod-2', 'v6e-3', 'tpu', ''])
def test_unknown_types_are_refused(name):
  with pytest.raises(ValueError, match='unknown TPU'):
    tpu_slices.parse(name)


def _fake_compiler(memory_of, available: float):
  """fits_at for largest_fitting: the TPU compiler's verdict for a program of memory_of(b)
  bytes on a device with ``available`` bytes (its refusal message included)."""
  calls = []

  def fits_at(b):
    calls.append(b)
    need = memory_of(b)
    if need > available:
      return preflight.Outcome(False, message=(
          f'RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
          f'temporaries ({need / 2**30:.2f}G) exceeds available HBM ({available / 2**30:.2f}G).'))
    return preflight.Outcome(True, {'memory_bytes': need})
  return fits_at, calls


@pytest.mark.parametrize('memory_of', [
    lambda b: 2**30 + 37e6 * b,                   # linear
    lambda b: 2**30 + 300e6 * (-(-b // 8)),       # padded to multiples of 8
    lambda b: 2**28 + 5e6 * b + 4e4 * b * b,      # convex
])
def test_the_batch_search_finds_the_largest_batch_that_fits(memory_of):
  available = 15.75 * 2**30
  fits_at, calls = _fake_compiler(memory_of, available)
  first = fits_at(4)
  largest, settled, spent = preflight.largest_fitting(
      fits_at, 4, first, capacity=16e9, max_compiles=12)
  truth = max(b for b in range(1, 5000) if memory_of(b) <= available)
  assert (largest, settled) == (truth, True)
  assert spent == len(calls) - 1 <= 12


def test_the_batch_search_settles_where_the_line_meets_the_capacity():
  """The compiles of cifar10's search for an h100-8 (GiB at 8, 16, 183 and 205 images): 205
  fits just under the 71.19 GiB pool, and one more image settles it, instead of doubling."""
  measured = {8: 3.66, 16: 6.74, 183: 63.45, 205: 71.02}
  memory_of = lambda b: measured.get(b, 3.66 + (b - 8) * 0.3419) * 2**30
  fits_at, calls = _fake_compiler(memory_of, available=71.19 * 2**30)
  largest, settled, spent = preflight.largest_fitting(fits_at, 8, fits_at(8), 71.19 * 2**30, 4)
  assert (largest, settled, spent) == (205, True, 4) and calls == [8, 16, 183, 205, 206]


def test_the_batch_search_goes_down_when_the_configs_batch_does_not_fit():
  fits_at, _ = _fake_compiler(lambda b: 1e9 * b, available=10.5e9)
  first = fits_at(64)
  assert not first.fits and first.available_bytes == pytest.approx(10.5e9, rel=1e-3)
  assert preflight.largest_fitting(fits_at, 64, first, 16e9, 12)[:2] == (10, True)


def test_the_batch_search_stops_at_its_budget_unsettled():
  memory_of = lambda b: 1e6 * b * b
  fits_at, calls = _fake_compiler(memory_of, available=1e12)
  largest, settled, spent = preflight.largest_fitting(fits_at, 2, fits_at(2), 1e12, 2)
  assert not settled and spent == 2
  assert largest == max(b for b in calls if memory_of(b) <= 1e12) < 1000


def test_lower_bounds_name_the_larger_one():
  tpu = tpu_slices.parse('v4-8')
  compute = preflight.lower_bounds(275e12, 1e9, tpu)  # 1 s of FLOPs, 0.8 ms of bytes
  assert compute['train_step_bound'] == 'compute'
  assert compute['train_step_lower_bound_s'] == pytest.approx(1.0)
  memory = preflight.lower_bounds(1e9, 1.2e12, tpu)
  assert memory['train_step_bound'] == 'memory'
  assert memory['train_step_lower_bound_s'] == pytest.approx(1.0)


def bench(*args, drop=('XLA_FLAGS',)):
  # Without the suite's CPU optimisation level: the TPU compiler would take it too.
  env = {k: v for k, v in os.environ.items() if k not in drop}
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.bench', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize('args, message', [
    (('--target=v9-8', '--compile_only'), 'unknown TPU accelerator type'),
    (('--target=v4-8',), 'add --compile_only'),
    (('--target=v4-8', '--compile_only', '--config.batch_size=18'),
     'batch_size 18 does not divide over the 4 devices of v4-8'),
    (('--target=v3-8', '--compile_only', '--max_batch_compiles=-1'), 'max_batch_compiles'),
])
def test_bad_targets_get_one_error_line(args, message):
  result = bench(*TINY, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert result.stderr.startswith('error: ') and message in result.stderr


@pytest.mark.skipif(tpu_slices.libtpu_installed(), reason='libtpu is installed here')
def test_without_libtpu_the_error_names_the_extra():
  result = bench(*TINY, '--target=v4-8', '--compile_only')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: --target compiles with libtpu, which is not installed: {tpu_slices.INSTALL_HINT}']


needs_libtpu = pytest.mark.skipif(not tpu_slices.libtpu_installed(),
                                  reason='needs libtpu (the [tpu] extra)')


@needs_libtpu
def test_the_tiny_config_compiles_for_a_tpu_slice_and_fits(tmp_path):
  """The train step, evaluator and sampler compiled for v5litepod-4 at the config's batch (4
  images per device), then once more at 8 by the batch search: memory grows with it. Nothing
  goes to the compilation cache: programs for a TPU never load on this machine."""
  result = bench(*TINY, '--target=v5litepod-4', '--compile_only', '--max_batch_compiles=1',
                 f'--compilation_cache={tmp_path / "cache"}',
                 drop=('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR'))
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert (figures['target'], figures['chips'], figures['hosts']) == ('v5litepod-4', 4, 1)
  assert figures['fits'] and figures['eval_fits'] and figures['sample_fits']
  assert 0 < figures['train_memory_bytes'] < figures['device_memory_bytes'] == 16 * 2**30
  assert figures['train_flops_per_image'] > 0 and figures['train_bytes_accessed'] > 0
  assert figures['train_step_lower_bound_s'] == max(figures['train_step_compute_bound_s'],
                                                    figures['train_step_memory_bound_s'])
  assert [t['per_device_batch'] for t in figures['batch_search']] == [4, 8]
  four, eight = (t['memory_bytes'] for t in figures['batch_search'])
  assert four == figures['train_memory_bytes'] < eight
  assert figures['max_per_device_batch'] == 8 and not figures['max_per_device_batch_settled']
  assert 'LOWER BOUND' in result.stdout and 'fits at the config' in result.stdout
  assert figures['compilation_cache'] is False
  assert not [p for p in (tmp_path / 'cache').rglob('*') if p.is_file() and 'cache' in p.name]


@needs_libtpu
def test_a_train_step_larger_than_the_hbm_is_reported_as_not_fitting():
  """The tiny digits model at 4096 filters (19 GB of state with the EMA and Adam's moments)
  on a 16 GB v5e: the compiler refuses the train step, and the command says so and what to
  try."""
  result = bench(TINY[0], '--target=v5litepod-4', '--compile_only', '--max_batch_compiles=0',
                 '--config.model.main.filters=4096')
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['fits'] is False and figures['train_memory_bytes'] is None
  assert 'eval_fits' not in figures  # the evaluator and sampler wait for a train step that fits
  assert 'exceeds available HBM' in figures['out_of_memory_message']
  assert 'train step fits at the config\'s batch' in result.stdout
  assert 'does not fit: RESOURCE_EXHAUSTED' in result.stderr
  assert '--config.model.remat=True' in result.stderr


@pytest.mark.parametrize('name, kind, gpus', [
    ('h100-8', 'NVIDIA H100 80GB HBM3', 8), ('A100-4', 'NVIDIA A100-SXM4-80GB', 4),
    ('h100-1', 'NVIDIA H100 80GB HBM3', 1)])
def test_gpu_machines_are_one_host_of_n_gpus(name, kind, gpus, monkeypatch):
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  machine = preflight.parse_target(name)
  assert (machine.platform, machine.device_kind, machine.devices, machine.hosts) == (
      'gpu', kind, gpus, 1)
  # Programs are held against what launch/gpu_local.sh lets JAX take of a GPU.
  assert machine.available_memory_bytes == 0.9 * machine.device_memory_bytes
  assert machine.device_memory_bytes > 79 * 2**30
  assert machine.peak_flops_per_device == accelerators.peak_flops(kind, 'float32')
  assert f'device_memory_size: {machine.device_memory_bytes}' in machine.gpu.target_config()


@pytest.mark.parametrize('name, message', [
    ('h100-3', 'unknown GPU machine'), ('a100-16', 'unknown GPU machine'),
    ('h200-8', 'or a GPU machine: a100-N, h100-N')])
def test_unknown_gpu_machines_are_refused(name, message):
  with pytest.raises(ValueError, match=message):
    preflight.parse_target(name)


def test_a_program_larger_than_the_available_memory_does_not_fit():
  """XLA:GPU compiles a program its allocator would then refuse: the pre-flight holds XLA's
  memory figures against what a program may use."""
  f = jax.jit(lambda x: jnp.sin(x) @ x)
  args = (jax.ShapeDtypeStruct((256, 256), jnp.float32),)
  need = preflight.compile_for_slice(f, args, bench_module.compiled_memory, 1e12)
  assert need.fits and need.memory['memory_bytes'] >= 2 * 256 * 256 * 4
  refused = preflight.compile_for_slice(f, args, bench_module.compiled_memory,
                                        need.memory['memory_bytes'] - 1)
  assert not refused.fits and refused.message.startswith('needs ')


@pytest.mark.skipif(importlib.util.find_spec('jax_cuda12_plugin') is not None,
                    reason="jax's CUDA plugin is installed here")
def test_without_the_cuda_plugin_the_error_names_jax_cuda12():
  result = bench(*TINY, '--target=h100-4', '--compile_only')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --target compiles with jax's CUDA plugin, which is not installed: "
      f'{gpu_targets.INSTALL_HINT}']


def test_the_gpu_memory_pool_follows_xla_python_client_mem_fraction(monkeypatch):
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.5')
  machine = preflight.parse_target('h100-8')
  assert machine.available_memory_bytes == 0.5 * machine.device_memory_bytes
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', 'most')
  with pytest.raises(ValueError, match='not a fraction'):
    preflight.parse_target('h100-8')
