"""Our train step against the official trainer's: 3 steps of the tiny CIFAR-10 model that
flows/flow_training.py ran (tests/fixtures/official/cifar10_tiny_train.npz), from the same
data-dependent init, on the same batches and dequantization noise."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import OFFICIAL, load_config, official_fixture_config
from flowpp_jax import architecture, objective
from flowpp_jax import config_defaults as d
from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.official import weights as official_weights
from flowpp_jax.trainer import optim, steps

# Adam's first updates are close to lr * sign(g): where a gradient element is near zero, float
# rounding can move it anywhere within +-lr (3e-4). Count those, bound the rest.
CLOSE = 1e-6


@pytest.fixture(scope='module')
def official():
  data = np.load(OFFICIAL / 'cifar10_tiny_train.npz')
  names = [str(n, 'utf-8') if isinstance(n, bytes) else str(n) for n in data['names']]
  return data, names, json.loads(str(data['training']))


def run_official_steps(data, names, info):
  """Our states after each of the official steps, and their metrics."""
  config = official_fixture_config('cifar10')
  assert load_config('cifar10').optimizer.grad_clip_norm == info['max_grad_norm']
  config.lr = d.lr_config(peak=info['lr'], warmup_steps=0)  # the fixture's constant rate
  config.model.dropout = info['dropout_p']
  nmap = official_weights.name_map(config.model)
  init = architecture.scanned_params(nmap.from_official({n: data[f'init/{n}'] for n in names}))
  direction = optim.adam_direction(config.optimizer)
  schedule = optim.learning_rate_schedule(config.lr)
  model = FlowPlusPlus(config.model)
  scale = objective.nats_per_bpd(np.prod(data['train_x'][0].shape[1:]))

  def bpd(module, x, eps):  # the model's ELBO with the official noise in place of its draw
    x = x.astype(jnp.float32)
    u, log_q = module.dequantizer.from_noise(x, eps)
    return -(module.log_density(x + u) - log_q) * (1.0 / scale)

  loss = lambda p, x, eps: jnp.mean(model.apply({'params': p}, x, eps, method=bpd)) * scale
  gradient = jax.jit(jax.value_and_grad(loss))
  update = jax.jit(lambda s, nats, g: steps.apply_gradients(
      s, nats / scale, g, direction=direction, schedule=schedule, ema_decay=info['ema_decay']))
  state = steps.create_state(init, direction)
  states, metrics = [state], []
  for x, eps in zip(data['train_x'], data['train_eps']):
    nats, grads = gradient(state.params, x, eps)
    state, m = update(state, nats, grads)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  official_names = lambda tree: nmap.to_official(architecture.unscanned_params(tree))
  return states, metrics, official_names


@pytest.fixture(scope='module')
def ours(official):
  return run_official_steps(*official)


def test_loss_and_gradient_norm_of_each_step(official, ours):
  _, _, info = official
  _, metrics, _ = ours
  for m, (bpd, grad_norm) in zip(metrics, info['step_bpd_gnorm']):
    assert abs(float(m['train_bpd']) - bpd) / bpd < 1e-6
    # The norm of the nats-per-image gradient, before clipping at 1 (~4,500 here).
    assert abs(float(m['grad_norm']) - grad_norm) / grad_norm < 1e-5
    assert float(m['lr']) == pytest.approx(info['lr'])


@pytest.mark.parametrize('step', [1, 3])
def test_parameters_after_steps_1_and_3(official, ours, step):
  data, names, info = official
  states, _, to_official = ours
  params = to_official(states[step].params)
  diff = np.concatenate([np.abs(params[n] - data[f'step{step}/{n}']).ravel() for n in names])
  moved = np.concatenate([np.abs(data[f'step{step}/{n}'] - data[f'init/{n}']).ravel()
                          for n in names])
  assert np.max(moved) > 0.9 * step * info['lr']  # the steps did move the parameters
  # Measured: 43 (step 1) and 50 (step 3) of 371,400 elements beyond 1e-6, at most 1.1e-4.
  assert np.sum(diff > CLOSE) < 1e-3 * diff.size
  assert np.max(diff) < info['lr']


def test_ema_starts_at_the_init_and_lags_one_update(official, ours):
  """The official EMA reads the parameters before each update (see
  steps.apply_gradients), so after the first update it still equals the init."""
  data, names, _ = official
  states, _, to_official = ours
  ema1 = to_official(states[1].ema_params)
  ulps = lambda a, b: np.max(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32)))
  # 0.999 x + 0.001 x is x up to float32 rounding; the post-update EMA would be further off.
  assert max(ulps(ema1[n], data[f'init/{n}']) for n in names) <= 2
  post = {n: np.float32(0.999) * data[f'init/{n}'] + np.float32(0.001) * data[f'step1/{n}']
          for n in names}
  assert max(ulps(post[n], data[f'init/{n}']) for n in names) > 100


def test_ema_after_3_steps_equals_the_checkpoints_tensorflow(official, ours):
  """cifar10_tiny_ckpt is the same run, saved after its 3 steps: its averages match ours (the
  EMA of the post-update parameters would be 1.4e-6 off, 5.6e-7 at the median)."""
  tf = pytest.importorskip('tensorflow')
  _, names, _ = official
  states, _, to_official = ours
  reader = tf.train.load_checkpoint(str(OFFICIAL / 'cifar10_tiny_ckpt' / 'model-3'))
  ema = to_official(states[3].ema_params)
  diff = np.concatenate([np.abs(ema[n] - reader.get_tensor(n + '/ExponentialMovingAverage'))
                         .ravel() for n in names])
  assert np.median(diff) < 1e-9 and np.max(diff) < 2e-6
