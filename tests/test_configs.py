"""The reference architectures: parameter counts equal the official launchers' exactly, and
the command line's summary mode reports them (and rejects bad input) as documented."""
import json
import os
import subprocess
import sys

import pytest

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax.data import datasets
from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.runtime import parallel
from flowpp_jax.trainer import summary
from flowpp_jax.trainer import optim, steps
from conftest import ROOT, init_model, load_config

OFFICIAL = {'cifar10': 31_443_440, 'imagenet32': 168_955_724, 'imagenet64': 73_489_960,
            'imagenet64_5bit': 73_489_960, 'celeba64_5bit': 73_489_960,
            'celeba64_3bit': 73_489_960, 'celeba128_5bit': 122_790_952}
# Levels of the launchers' data (their ImgProc scales by it, their context by 1 / it).
LEVELS = {'imagenet64_5bit': 32, 'celeba64_5bit': 32, 'celeba64_3bit': 8, 'celeba128_5bit': 32}


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_parameter_count_equals_official(name):
  _, totals = summary.summary_rows(load_config(name).model)
  assert totals['num_params'] == OFFICIAL[name]


@pytest.mark.parametrize('name', sorted(LEVELS))
def test_low_bit_configs_read_their_levels(name):
  config = load_config(name)
  assert config.model.num_levels == LEVELS[name]
  info = datasets.describe(config)
  assert (info.num_levels, info.image_shape) == (LEVELS[name], tuple(config.model.image_shape))


# The digits ablations (the paper's Table 2 in miniature): the widened ones hold digits'
# parameter count within 2%.
DIGITS = {'digits': 637_208, 'digits_no_attention': 637_208, 'digits_affine': 641_116,
          'digits_uniform_dequant': 626_048}


@pytest.mark.parametrize('name', sorted(DIGITS))
def test_digits_ablation_parameter_counts(name):
  _, totals = summary.summary_rows(load_config(name).model)
  assert totals['num_params'] == DIGITS[name]


def one_train_step(config, levels: int):
  """(state before, state after, metrics) of one update at the peak rate on 4 random images
  of ``levels`` levels."""
  model = FlowPlusPlus(config.model)
  shape = tuple(config.model.image_shape)
  assert model.num_dims == int(np.prod(shape))
  images = np.random.default_rng(0).integers(0, levels, (4, *shape), dtype=np.uint8)
  images[:2] = images[:2] // 2  # some structure for the init to normalise
  direction = optim.adam_direction(config.optimizer)
  state = steps.create_state(init_model(model, jnp.asarray(images))['params'], direction)
  state = state.replace(step=jnp.int32(config.lr.warmup_steps))
  step = jax.pmap(functools.partial(
      steps.train_step, model=model, direction=direction,
      schedule=optim.learning_rate_schedule(config.lr), ema_decay=config.optimizer.ema_decay,
      seed=0), axis_name=steps.AXIS)
  new, metrics = step(parallel.replicate(state), parallel.shard(images),
                      parallel.shard(np.arange(4, dtype=np.int32)))
  return state, parallel.unreplicate(new), parallel.unreplicate(metrics)


def unchanged(state, new):
  """The parameters one update left as they were."""
  old_leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  return [jax.tree_util.keystr(path) for (path, a), b in
          zip(old_leaves, jax.tree_util.tree_leaves(new.params)) if np.array_equal(a, b)]


# The low-bit configs' two architectures (64x64 and 128x128) at both level counts (8, 32);
# imagenet64_5bit and celeba64_5bit build celeba64_3bit's model at 32 levels (checked below).
STEPPED = ('celeba64_3bit', 'celeba128_5bit')


@pytest.mark.parametrize('name', STEPPED)
def test_low_bit_configs_tiny_variant_takes_a_train_step(name):
  """The same layouts at a quarter of the side: one update at the peak rate gives a finite
  loss and moves every parameter that has a gradient."""
  config = load_config(name, 'tiny')
  state, new, metrics = one_train_step(config, LEVELS[name])
  assert np.isfinite(float(metrics['train_bpd']))
  assert float(metrics['lr']) == pytest.approx(config.lr.peak, rel=1e-6)
  # The dequantizer's attention-free couplings keep the official code's unused pos_emb.
  assert unchanged(state, new) == [
      "['dequantizer']['flow']['layers_1']['steps']['coupling']['net']['pos_emb']"]


@pytest.mark.parametrize('name', sorted(set(LEVELS) - set(STEPPED)))
def test_the_other_low_bit_configs_build_a_stepped_model(name):
  """What a train step of these would compile differs from celeba64_3bit's only in the
  levels, which celeba128_5bit's step covers at 32; their schedules reach their peak."""
  config, stepped = load_config(name, 'tiny'), load_config('celeba64_3bit', 'tiny')
  stepped.model.num_levels = LEVELS[name]
  assert config.model.to_dict() == stepped.model.to_dict()
  schedule = optim.learning_rate_schedule(config.lr)
  assert float(schedule(config.lr.warmup_steps)) == pytest.approx(config.lr.peak, rel=1e-6)


@pytest.mark.parametrize('name', sorted(set(DIGITS) - {'digits'}))
def test_digits_ablations_tiny_variant_takes_a_train_step(name):
  """Each ablation's change is in the model it builds, and one update gives a finite loss and
  moves every parameter (the maxout mixer reads pos_emb as the attention does)."""
  config = load_config(name, 'tiny')
  model = config.model
  assert (model.main.coupling == 'affine') == (name == 'digits_affine')
  assert (model.main.mixer == 'maxout') == (name == 'digits_no_attention')
  assert (model.dequant.kind == 'uniform') == (name == 'digits_uniform_dequant')
  state, new, metrics = one_train_step(config, 17)
  assert np.isfinite(float(metrics['train_bpd']))
  assert unchanged(state, new) == []


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
