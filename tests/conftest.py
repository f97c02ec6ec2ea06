"""Shared fixtures: tiny model configs that exercise every part of the real architecture."""
import atexit
import os
import shutil
import tempfile

# The suite's time is almost all XLA:CPU compilation; LLVM's optimisation passes are most of
# that (a tiny model's init compiles in 10 s instead of 24 s without them) and change no
# result the tests check. Set before JAX creates its CPU backend. FLOWPP_TEST_XLA_DEFAULTS=1
# keeps XLA's defaults, as users run it (CI runs the bit-identical resume test so).
if not os.environ.get('FLOWPP_TEST_XLA_DEFAULTS'):
  os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')
# The trainer tests start several processes that compile the same programs: a persistent
# compilation cache, shared through the environment, compiles each program once per session.
_CACHE_DIR = tempfile.mkdtemp(prefix='flowpp_jax_tests_jax_cache_')
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _CACHE_DIR)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import json  # pylint: disable=g-import-not-at-top
import pathlib

import jax
import numpy as np
import pytest

from flowpp_jax import config_defaults as d
from flowpp_jax import model as model_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / 'tests' / 'fixtures' / 'official'  # built by the official code


def load_config(name, *args):
  """get_config(*args) of configs/<name>.py."""
  return d.config_from_file(ROOT / 'configs' / f'{name}.py', *args)


def initialised_workdir(workdir, config=None):
  """A workdir holding a checkpoint of the data-dependent init of ``config`` (default: the
  digits config's tiny variant) and its config.json, as a run leaves them; returns the
  config."""
  from flowpp_jax.trainer import experiment  # pylint: disable=g-import-not-at-top
  config = config or load_config('digits', 'tiny')
  exp = experiment.Experiment(config, workdir, device_count=1)
  exp.save(exp.init_state())
  exp.checkpoints.wait()
  exp.checkpoints.close()
  exp.write_config()
  return config


def tiny_model_config(image_shape=(8, 8, 3), *, num_levels=256, main_layout='checker2 s2d channel1',
                      dequant_layout='checker1', dequant_kind='variational', coupling='mixlogistic',
                      mixer='attention', pointwise=True, weight_norm=False, dropout=0.1,
                      compute_dtype='float32', norm='norm', checkerboard='columns'):
  net = dict(filters=8, blocks=1, components=4, heads=2, pointwise=pointwise,
             weight_norm=weight_norm, coupling=coupling, mixer=mixer)
  return d.model_config(
      image_shape=image_shape, num_levels=num_levels, dropout=dropout,
      compute_dtype=compute_dtype, norm=norm, checkerboard=checkerboard,
      main=d.flow_config(layout=main_layout, **net),
      dequant=d.dequant_config(kind=dequant_kind, layout=dequant_layout, context_features=8,
                               context_blocks=1, context_layer_norm=True,
                               context_mixer='attention', **net))


def init_model(model, images, seed=0):
  """Data-dependent init on ``images`` with dropout on, as the trainer does."""
  return model_lib.init_variables(model, images, *jax.random.split(jax.random.PRNGKey(seed), 3))


def assert_one_error_line(result, *fragments):
  """A finished command line (subprocess.run's result) that failed as bad input should: status
  2 and one ``error: ...`` line on stderr holding each of ``fragments``."""
  assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines[-5:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.fixture
def tiny_config():
  return tiny_model_config()


def official_fixture_config(name, scan_layers=True):
  """configs/<name>.py with the official fixture's construct() arguments (its *_io.npz says them)."""
  args = json.loads(str(np.load(OFFICIAL / f'{name}_tiny_io.npz')['construct_args']))
  config = load_config(name)
  net = dict(filters=args['filters'], components=args['components'])
  if name == 'cifar10':
    config.model.main.update(blocks=args['blocks'], **net)
    config.model.dequant.update(filters=args['dequant_filters'], components=args['components'])
  else:
    net['heads'] = args['attn_heads']
    config.model.main.update(blocks=args['blocks'], **net)
    config.model.dequant.update(**net)
  config.model.scan_layers = scan_layers
  return config
