"""The train step's arithmetic (Adam on clipped gradients, lr from the step, Polyak EMA), its
non-finite guard, and per-example randomness, on a model small enough to compile in seconds."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flowpp_jax import config_defaults as d
from flowpp_jax.runtime import parallel
from flowpp_jax.trainer import loop, optim, steps


class NoisyQuadratic(nn.Module):
  """bpd = mean((x/16 - w)^2) + noise from the sample key and (training) the dropout key;
  NaN for an image holding the value 255."""

  @nn.compact
  def __call__(self, x, rng, *, deterministic=True):
    w = self.param('w', nn.initializers.zeros, (x.shape[-1],))
    v = jnp.mean((x.astype(jnp.float32) / 16 - w) ** 2, axis=(1, 2, 3))
    v = v + 0.01 * jax.random.normal(rng, v.shape)
    if not deterministic:
      v = v + 0.01 * jax.random.normal(self.make_rng('dropout'), v.shape)
    v = jnp.where(jnp.max(x, axis=(1, 2, 3)) == 255, jnp.nan, v)
    return {'bpd': v, 'log_px': -v, 'log_qu': jnp.zeros_like(v)}


MODEL = NoisyQuadratic()
OPT = d.base_config().optimizer
LR = d.lr_config(peak=0.1, warmup_steps=4)


def images(seed, n=4):
  return np.random.RandomState(seed).randint(0, 17, (n, 2, 2, 3)).astype(np.uint8)


def make_step(ema_decay=0.9):
  direction = optim.adam_direction(OPT)
  step = jax.pmap(functools.partial(
      steps.train_step, model=MODEL, direction=direction,
      schedule=optim.learning_rate_schedule(LR), ema_decay=ema_decay, seed=0),
      axis_name=parallel.AXIS)
  params = {'w': jnp.full((3,), 0.5)}
  return step, direction, steps.create_state(params, direction)


def run(step, state, batch, positions):
  new, metrics = step(parallel.replicate(state), parallel.shard(batch),
                      parallel.shard(positions))
  return parallel.unreplicate(new), parallel.unreplicate(metrics)


def test_update_is_adam_on_clipped_gradient_with_scheduled_lr_and_ema():
  step, direction, state = make_step(ema_decay=0.9)
  # At step 1 (warmup: lr = 0.1 * 1 / 4) with an EMA apart from the parameters.
  state = state.replace(step=jnp.int32(1), ema_params={'w': jnp.full((3,), 0.2)})
  x, pos = images(0), np.arange(4, dtype=np.int32)
  new, metrics = run(step, state, x, pos)
  # The same update by hand: gradient of the mean per-example nats (bpd * D ln 2, D = 12).
  keys = steps.example_keys(0, steps.TRAIN_TAG, jnp.asarray(pos))
  nats = 12 * np.log(2.0)
  loss = lambda p: jnp.mean(steps.per_example_bpd(MODEL, p, x, keys, deterministic=False)) * nats
  value, grads = jax.value_and_grad(loss)(state.params)
  direction_updates, _ = direction.update(grads, state.opt_state, state.params)
  lr = 0.1 * 1 / 4
  expected = state.params['w'] - lr * direction_updates['w']
  np.testing.assert_allclose(new.params['w'], expected, rtol=1e-6)
  # The EMA moves towards the parameters before the update, as the official trainer's does.
  np.testing.assert_allclose(new.ema_params['w'], 0.9 * 0.2 + 0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(metrics['train_bpd'], value / nats, rtol=1e-6)
  np.testing.assert_allclose(metrics['lr'], lr, rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm'], optax.tree.norm(grads), rtol=1e-6)
  assert int(new.step) == 2 and int(new.nonfinite_total) == 0


def test_first_update_has_a_rate_of_zero_but_moves_adam():
  step, _, state = make_step()
  new, metrics = run(step, state, images(0), np.arange(4, dtype=np.int32))
  assert float(metrics['lr']) == 0.0
  np.testing.assert_array_equal(new.params['w'], state.params['w'])
  assert int(new.opt_state[1].count) == 1 and np.all(new.opt_state[1].mu['w'] != 0)


def test_nonfinite_loss_skips_the_update_and_is_counted():
  step, _, state = make_step()
  bad = images(1)
  bad[2, 0, 0, 0] = 255
  pos = np.arange(4, dtype=np.int32)
  after_bad, metrics = run(step, state, bad, pos)
  assert not np.isfinite(metrics['train_bpd'])
  for field in ('params', 'ema_params', 'opt_state'):
    chex_equal = jax.tree_util.tree_map(np.array_equal, getattr(after_bad, field),
                                        jax.device_get(getattr(state, field)))
    assert all(jax.tree_util.tree_leaves(chex_equal)), field
  assert (int(after_bad.step), int(after_bad.nonfinite_in_row),
          int(after_bad.nonfinite_total)) == (1, 1, 1)
  after_good, _ = run(step, after_bad, images(2), pos + 4)
  assert (int(after_good.nonfinite_in_row), int(after_good.nonfinite_total)) == (0, 1)
  assert not np.array_equal(after_good.params['w'], after_bad.params['w'])


def test_too_many_nonfinite_in_a_row_stops_training():
  metrics = parallel.replicate({'nonfinite_in_row': np.int32(3)})
  loop._check_finite(metrics, 4, step=10)  # below the limit: no error
  with pytest.raises(loop.NonFiniteError, match='3 non-finite losses in a row'):
    loop._check_finite(metrics, 3, step=10)


def test_each_example_draws_from_its_own_key():
  """Per-example values do not depend on which other examples share the batch, so splitting a
  batch over devices changes nothing; different positions give different noise."""
  params = {'w': jnp.full((3,), 0.5)}
  x, pos = images(3, n=6), jnp.arange(100, 106)
  keys = steps.example_keys(7, steps.TRAIN_TAG, pos)
  whole = steps.per_example_bpd(MODEL, params, x, keys, deterministic=False)
  halves = jnp.concatenate([
      steps.per_example_bpd(MODEL, params, x[:2], keys[:2], deterministic=False),
      steps.per_example_bpd(MODEL, params, x[2:], keys[2:], deterministic=False)])
  np.testing.assert_array_equal(whole, halves)
  same_image = np.repeat(x[:1], 6, axis=0)
  values = steps.per_example_bpd(MODEL, params, same_image, keys, deterministic=False)
  assert len(np.unique(np.asarray(values))) == 6
  other_tag = steps.per_example_bpd(MODEL, params, x, steps.example_keys(
      7, steps.EVAL_TAG, pos), deterministic=False)
  assert not np.array_equal(whole, other_tag)
