"""Learning-rate schedules against the official ones, the EMA update, and config checks."""
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax import config_defaults as d
from flowpp_jax import optim
from conftest import load_config


def lr_at(config, steps):
  schedule = optim.learning_rate_schedule(config.lr)
  return np.array([float(schedule(s)) for s in steps])


def test_cifar10_warmup_then_constant():
  lr = lr_at(load_config('cifar10'), [0, 999, 1999, 2000, 100_000])
  np.testing.assert_allclose(lr, 3e-4 * np.array([1 / 2000, 1000 / 2000, 1, 1, 1]), rtol=1e-6)


def test_imagenet32_exponential_decay_to_floor():
  lr = lr_at(load_config('imagenet32'), [4999, 50_000, 51_000, 70_000, 80_000, 500_000])
  # 0.99995^20000 = 0.37 is above the floor of 0.3; 0.99995^30000 = 0.22 is below it.
  expected = [1e-3, 1e-3, 1e-3 * 0.99995 ** 1000, 1e-3 * 0.99995 ** 20_000, 3e-4, 3e-4]
  np.testing.assert_allclose(lr, expected, rtol=1e-4)


def test_imagenet64_intended_schedule():
  steps = [0, 9_999, 10_000, 50_000, 52_500, 55_000, 229_999, 230_000, 279_999, 280_000,
           285_000, 290_000]
  lr = lr_at(load_config('imagenet64'), steps)
  expected = [4e-4 / 10_000, 4e-4, 4e-4, 4e-4, 3.5e-4, 3e-4, 3e-4, 1e-5, 1e-5, 1e-6, 1e-6, 1e-6]
  np.testing.assert_allclose(lr, expected, rtol=1e-5)
  assert (lr > 0).all()  # the official function is negative between 280k and 290k


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
