"""A workdir that an earlier version of the code wrote (tests/fixtures/old_workdir, see
tests/fixtures/README.md) still resumes: the checkpoint restores into today's TrainState, and
two more steps end where that code's own resume ended."""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np

from flowpp_jax.trainer import experiment
from conftest import ROOT

FIXTURES = ROOT / 'tests' / 'fixtures'
# The command line the fixture was written with (less --workdir and num_train_steps).
OLD_WORKDIR_ARGS = (
    '--config=configs/digits.py:tiny', '--config.model.main.layout=checker1',
    '--config.model.main.mixer=none', '--config.model.dequant.kind=uniform',
    '--config.model.main.filters=8', '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2', '--config.eval_every_steps=2',
    '--config.sample_every_steps=0', '--config.eval.num_iw_samples=1',
    '--config.eval.num_examples=20', '--config.sample.num=4')
# float32 sums in another order (another jax version): ~1e-8; each step moves a parameter by
# up to ~1e-4.
ATOL = 1e-6


def flat(state) -> dict:
  return {f'{name}/{jax.tree_util.keystr(path, simple=True, separator="/")}': np.asarray(leaf)
          for name in ('params', 'ema_params')
          for path, leaf in jax.tree_util.tree_flatten_with_path(getattr(state, name))[0]}


def test_an_old_workdir_resumes_where_the_old_code_did(tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(FIXTURES / 'old_workdir', workdir)
  result = subprocess.run(
      [sys.executable, '-m', 'flowpp_jax.main', f'--workdir={workdir}', *OLD_WORKDIR_ARGS,
       '--config.num_train_steps=4'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'resuming from {workdir}/checkpoints/2' in result.stdout
  config = experiment.load_config(workdir)
  exp = experiment.Experiment(config, workdir, read_only=True)
  ours = flat(exp.restore())
  exp.checkpoints.close()
  start = flat(experiment.Experiment(config, FIXTURES / 'old_workdir', read_only=True).restore())
  expected = np.load(FIXTURES / 'old_workdir_step4.npz')
  assert sorted(ours) == sorted(expected.files)
  moved = max(np.abs(expected[k] - start[k]).max() for k in expected.files)
  assert moved > 10 * ATOL, 'the two steps should move the parameters'
  for key in expected.files:
    np.testing.assert_allclose(ours[key], expected[key], rtol=0, atol=ATOL, err_msg=key)
