"""python -m flowpp_jax.tools.kernel_bench at small sizes: every figure measured and positive,
the table built from them, the chunks the backend picks, and bad flags refused in one line."""
import json
import os
import subprocess
import sys

from conftest import ROOT, assert_one_error_line

SMALL = ('--positions=64', '--examples=1', '--heads=2', '--head_dim=4', '--filters=4',
         '--repeats=1', '--peak_size=64')


def run(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.tools.kernel_bench', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_every_kernel_is_timed_and_tabled():
  result = run(*SMALL)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  kernels = ('attention_64_forward', 'attention_64_train',
             'attention_forward_chunks_both_passes_64_forward',
             'attention_forward_chunks_both_passes_64_train', 'conv3x3_64_forward',
             'conv3x3_64_train', 'dropout_mask_64', 'jax_bernoulli_mask_64')
  for name in kernels:
    assert figures[f'{name}_s'] > 0, name
    assert f'| {name} |' in result.stdout, name
  for name in kernels[:6]:
    assert figures[f'{name}_flops_per_s'] > 0, name
  assert figures['peak_flops_per_s'] > 0
  # 64 queries over 64 keys: the CPU's budgets (64K and 32K weights) take them in one block.
  assert figures['attention_64_chunks'] == [64, 64]


def test_bad_flags_are_refused_in_one_line():
  for bad, fragment in (('--positions=100', 'multiples of 32'),
                        ('--positions=abc', 'integers'), ('--repeats=0', '>= 1')):
    assert_one_error_line(run(*SMALL, bad), fragment)
