"""Learning-rate schedules against the official ones, the EMA update, and config checks."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowpp_jax import config_defaults as d
from flowpp_jax.trainer import optim
from conftest import load_config


def lr_at(config, steps):
  schedule = optim.learning_rate_schedule(config.lr)
  return np.array([float(schedule(s)) for s in steps])


def test_cifar10_warmup_then_constant():
  # As run_cifar.py's lr_schedule: max_lr * step / warmup_steps, then max_lr.
  lr = lr_at(load_config('cifar10'), [0, 1, 1000, 1999, 2000, 100_000])
  np.testing.assert_allclose(lr, 3e-4 * np.array([0, 1 / 2000, 0.5, 1999 / 2000, 1, 1]),
                             rtol=1e-6, atol=1e-12)


def test_imagenet32_exponential_decay_to_floor():
  lr = lr_at(load_config('imagenet32'), [4999, 50_000, 51_000, 70_000, 80_000, 500_000])
  # 0.99995^20000 = 0.37 is above the floor of 0.3; 0.99995^30000 = 0.22 is below it.
  expected = [1e-3 * 4999 / 5000, 1e-3, 1e-3 * 0.99995 ** 1000, 1e-3 * 0.99995 ** 20_000, 3e-4,
              3e-4]
  np.testing.assert_allclose(lr, expected, rtol=1e-4)


def test_imagenet64_intended_schedule():
  steps = [0, 9_999, 10_000, 50_000, 52_500, 55_000, 229_999, 230_000, 279_999, 280_000,
           285_000, 290_000]
  lr = lr_at(load_config('imagenet64'), steps)
  expected = [0, 4e-4 * 9_999 / 10_000, 4e-4, 4e-4, 3.5e-4, 3e-4, 3e-4, 1e-5, 1e-5, 1e-6, 1e-6,
              1e-6]
  np.testing.assert_allclose(lr, expected, rtol=1e-5)
  assert (lr[1:] > 0).all()  # the official function is negative between 280k and 290k


def official_imagenet64_5bit(total):
  """imagenet64_5bit_official.py's lr_schedule, called step by step as its trainer does (a
  global curr_lr decays by 0.9995 per call); None where no branch returns."""
  out, curr_lr = [], None
  for step in range(total):
    value = None
    if step < 10_000:
      value = 4e-4 * step / 10_000
    elif 10_000 < step < 50_000:
      curr_lr = value = 4e-4
    elif step > 50_000 and curr_lr > 3e-4:
      curr_lr *= 0.9995
      value = curr_lr
    elif step > 50_000 and curr_lr <= 3e-4 and step < 110_000:
      value = 3e-4
    elif 110_000 < step < 130_000:
      value = 1e-5 * (step - 110_000) / 20_000
    elif step > 130_000:
      value = 1e-5
    out.append(value)
  return out


def official_celeba64(total):
  """celeba64_5bit_official.py's (and celeba64_3bit's) lr_schedule, called step by step."""
  out, curr_lr = [], None
  for step in range(total):
    if step < 20_000:
      out.append(4e-5 * step / 20_000)
      continue
    if step <= 50_000:
      curr_lr = 4e-5
    elif curr_lr > 1e-5:
      curr_lr *= 0.9995
    out.append(curr_lr)
  return out


@pytest.mark.parametrize('name, official, holes', [
    ('imagenet64_5bit', official_imagenet64_5bit, [10_000, 50_000, 110_000, 130_000]),
    ('celeba64_5bit', official_celeba64, []),
    ('celeba64_3bit', official_celeba64, []),
])
def test_low_bit_schedules_follow_the_official_ones(name, official, holes):
  total = 150_000
  theirs = official(total)
  assert [s for s, v in enumerate(theirs) if v is None] == holes
  ours = np.asarray(optim.learning_rate_schedule(load_config(name).lr)(np.arange(total)))
  defined = np.array([v is not None for v in theirs])
  theirs = np.array([np.nan if v is None else v for v in theirs])
  # Theirs overshoots the floor by one decay step (x0.9995) where it crosses it; ours stops.
  np.testing.assert_allclose(ours[defined], theirs[defined], rtol=6e-4, atol=1e-12)
  assert np.isfinite(ours).all() and (ours >= 0).all()
  if holes:  # the holes get the neighbouring rates
    np.testing.assert_allclose(ours[holes], [4e-4, 4e-4, 0, 1e-5], rtol=1e-6)


def test_celeba128_warmup_then_constant():
  lr = lr_at(load_config('celeba128_5bit'), [0, 25_000, 49_999, 50_000, 400_000])
  np.testing.assert_allclose(lr, [0, 5e-6, 1e-5 * 49_999 / 50_000, 1e-5, 1e-5], rtol=1e-6)


def test_digits_and_ablation_configs_have_training_fields():
  for name in ('digits', 'cifar10_affine', 'cifar10_no_attention', 'cifar10_uniform_dequant'):
    config = load_config(name)
    optim.validate_lr_config(config.lr)
    optim.validate_optimizer_config(config.optimizer)
    for field in ('dataset', 'batch_size', 'num_train_steps', 'seed', 'log_every_steps',
                  'eval_every_steps', 'checkpoint_every_steps'):
      assert field in config
    assert {'num_examples', 'num_iw_samples'} <= set(config.eval.keys())


@pytest.mark.parametrize('field,value,message', [
    ('peak', 0.0, 'lr.peak'), ('decay', 'cosine', 'lr.decay'), ('drops', '10:1e-5', 'lr.drops'),
    ('warmup_steps', -1, 'lr.warmup_steps')])
def test_bad_schedule_is_rejected(field, value, message):
  cfg = d.lr_config(peak=1e-3, warmup_steps=10)
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    optim.validate_lr_config(cfg)


def test_linear_decay_needs_an_end():
  with pytest.raises(ValueError, match='decay_end'):
    optim.validate_lr_config(d.lr_config(peak=1e-3, warmup_steps=0, decay='linear',
                                         decay_start=10, decay_end=5))


def test_adam_direction_is_tensorflows():
  """TensorFlow 1's AdamOptimizer, in float64 by hand: eps added to sqrt(v) before the bias
  correction (optax.scale_by_adam adds it after). Gradients small enough for eps to matter."""
  direction = optim.scale_by_tf_adam(b1=0.9, b2=0.999, eps=1e-8)
  grads = [np.array([3e-8, -1e-6, 2e-3]), np.array([-5e-8, 4e-6, 1e-3])]
  state = direction.init({'w': jnp.zeros(3)})
  m = v = np.zeros(3)
  for t, g in enumerate(grads, start=1):
    updates, state = direction.update({'w': jnp.asarray(g, jnp.float32)}, state)
    m, v = m + (g - m) * 0.1, v + (g * g - v) * 0.001
    expected = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(updates['w'], expected, rtol=2e-5)
    optax_updates, _ = optax.scale_by_adam(eps=1e-8).update(
        {'w': jnp.asarray(g, jnp.float32)}, optax.scale_by_adam().init({'w': jnp.zeros(3)}))
    if t == 1:  # the two placements differ where sqrt(v) is near eps
      assert abs(float(optax_updates['w'][0]) - expected[0]) > 0.1 * abs(expected[0])
  assert int(state.count) == 2


def test_ema_update_is_polyak_average():
  ema = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array(4.0)}
  params = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array(0.0)}
  out = optim.ema_update(ema, params, 0.75)
  np.testing.assert_allclose(out['a'], [1.5, 1.5])
  np.testing.assert_allclose(out['b'], 3.0)


def test_parse_drops_sorts_and_rejects_garbage():
  assert optim.parse_drops(' 280000=1e-6, 230000=1e-5 ') == [(230000, 1e-5), (280000, 1e-6)]
  assert optim.parse_drops('') == []
  with pytest.raises(ValueError):
    optim.parse_drops('230000')
