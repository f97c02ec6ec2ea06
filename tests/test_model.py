"""The whole FlowPlusPlus model on tiny configs: exact uint8 round trip, a density that
integrates to one, the importance-weighted bound, finite gradients, and input checking."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import init_model, tiny_model_config
from flowpp_jax import objective
from flowpp_jax.model import FlowPlusPlus


def _images(shape, num_levels=256, seed=0, batch=8):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, *shape), 0,
                            num_levels).astype(jnp.uint8)


VARIANTS = {
    'default': {},
    'uniform_dequant': dict(dequant_kind='uniform'),
    'affine': dict(coupling='affine'),
    'maxout_mixer': dict(mixer='maxout'),
    'no_mixer_no_pointwise': dict(mixer='none', pointwise=False),
    'actnorm_2d_checkerboard': dict(norm='actnorm', checkerboard='2d'),
    'weight_norm': dict(weight_norm=True),
    'bfloat16_conditioners': dict(compute_dtype='bfloat16'),
}


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_decode_encode_is_exact(variant):
  cfg = tiny_model_config(**VARIANTS[variant])
  model = FlowPlusPlus(cfg)
  x = _images(cfg.image_shape)
  variables = init_model(model, x)
  z = jax.jit(lambda x, k: model.apply(variables, x, k, method=model.encode))(
      x, jax.random.PRNGKey(3))
  chex.assert_shape(z, (x.shape[0], 4, 4, 12))  # after the layout's one s2d
  chex.assert_tree_all_finite(z)
  x_back = jax.jit(lambda z: model.apply(variables, z, method=model.decode))(z)
  assert x_back.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(x_back), np.asarray(x))


def test_extreme_pixel_values_round_trip(tiny_config):
  model = FlowPlusPlus(tiny_config)
  x = jnp.concatenate([jnp.zeros((2, 8, 8, 3), jnp.uint8), jnp.full((2, 8, 8, 3), 255, jnp.uint8),
                       _images((8, 8, 3), batch=4)])
  variables = init_model(model, x)
  z = model.apply(variables, x, jax.random.PRNGKey(1), method=model.encode)
  np.testing.assert_array_equal(model.apply(variables, z, method=model.decode), x)


def test_continuous_density_integrates_to_one():
  """Midpoint rule over the support of y = x + u: the logit preprocessing maps [0, L] into
  (0.05, 0.95), so the density lives on (-L/18, 19L/18)^4. A wrong log-det term anywhere in
  the chain scales this integral away from 1."""
  levels = 4
  cfg = tiny_model_config((2, 2, 1), num_levels=levels, main_layout='checker1 s2d channel1',
                          dropout=0.0)
  model = FlowPlusPlus(cfg)
  variables = init_model(model, _images((2, 2, 1), levels, batch=64))
  lo, hi = -levels / 18, 19 * levels / 18
  log_density = jax.jit(lambda y: model.apply(variables, y, method=model.log_density))

  def midpoint_rule(n):
    g = ((np.arange(n) + 0.5) / n * (hi - lo) + lo).astype(np.float32)
    grid = np.stack(np.meshgrid(g, g, g, g, indexing='ij'), -1).reshape(-1, 2, 2, 1)
    chunks = [np.asarray(log_density(grid[i:i + 2 ** 15])) for i in range(0, len(grid), 2 ** 15)]
    return np.exp(np.concatenate(chunks).astype(np.float64)).sum() * ((hi - lo) / n) ** 4

  coarse, fine = midpoint_rule(16), midpoint_rule(24)
  # The midpoint rule's error falls as 1/n^2 (seen: 2.2e-2 at n=16, 8.9e-3 at n=24), so
  # Richardson extrapolation removes it; what is left is the model's own normalisation.
  total = (24 ** 2 * fine - 16 ** 2 * coarse) / (24 ** 2 - 16 ** 2)
  assert abs(fine - 1.0) < 2e-2, fine
  assert abs(total - 1.0) < 5e-3, (coarse, fine, total)


def test_importance_weighted_bound_is_at_least_the_elbo(tiny_config):
  model = FlowPlusPlus(tiny_config)
  x = _images(tiny_config.image_shape, batch=16)
  variables = init_model(model, x)
  k = 16
  # Independent draws: the IW bound with K samples against the mean of single-sample ELBOs.
  iw = objective.iw_log_likelihood(model, variables, x, jax.random.PRNGKey(7), k)
  elbo_keys = jax.random.split(jax.random.PRNGKey(8), k)
  elbo_fn = jax.jit(lambda key: (lambda o: o['log_px'] - o['log_qu'])(
      model.apply(variables, x, key)))
  elbo = jnp.stack([elbo_fn(key) for key in elbo_keys]).mean(0)
  assert float(jnp.mean(iw)) > float(jnp.mean(elbo))
  # With K = 1 the IW bound is exactly the ELBO of the same draw.
  one = objective.iw_log_likelihood(model, variables, x, jax.random.PRNGKey(9), 1)
  same = model.apply(variables, x, jax.random.split(jax.random.PRNGKey(9), 1)[0])
  np.testing.assert_allclose(one, same['log_px'] - same['log_qu'], rtol=1e-6)


def test_bpd_matches_its_definition(tiny_config):
  model = FlowPlusPlus(tiny_config)
  x = _images(tiny_config.image_shape)
  variables = init_model(model, x)
  out = model.apply(variables, x, jax.random.PRNGKey(0))
  chex.assert_shape([out['log_px'], out['log_qu'], out['bpd']], (x.shape[0],))
  expected = -(out['log_px'] - out['log_qu']) / (np.prod(x.shape[1:]) * np.log(2))
  np.testing.assert_allclose(out['bpd'], expected, rtol=1e-6)
  # A fresh model on uniform noise sits near 8 bits/dim: the sanity range of a data-init flow.
  assert 6.0 < float(out['bpd'].mean()) < 12.0


def test_gradients_are_finite_with_dropout(tiny_config):
  model = FlowPlusPlus(tiny_config)
  x = _images(tiny_config.image_shape)
  variables = init_model(model, x)

  def loss(params):
    out = model.apply({'params': params}, x, jax.random.PRNGKey(1), deterministic=False,
                      rngs={'dropout': jax.random.PRNGKey(2)})
    return out['bpd'].mean()

  grads = jax.jit(jax.grad(loss))(variables['params'])
  chex.assert_tree_all_finite(grads)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
  assert sum(n > 0 for n in norms) > 0.9 * len(norms)


def test_samples_are_uint8_images(tiny_config):
  model = FlowPlusPlus(tiny_config)
  variables = init_model(model, _images(tiny_config.image_shape))
  s = model.apply(variables, jax.random.PRNGKey(0), 5, 0.7, method=model.sample)
  assert s.dtype == jnp.uint8 and s.shape == (5, 8, 8, 3)
  s2 = model.apply(variables, jax.random.PRNGKey(0), 5, 0.7, method=model.sample)
  np.testing.assert_array_equal(s, s2)


def test_bad_inputs_raise_value_error(tiny_config):
  model = FlowPlusPlus(tiny_config)
  x = _images(tiny_config.image_shape)
  variables = init_model(model, x)
  with pytest.raises(ValueError, match='uint8'):
    model.apply(variables, x.astype(jnp.float32), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='shape'):
    model.apply(variables, x[:, :4], jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='shape'):
    model.apply(variables, jnp.zeros((2, 8, 8, 3)), method=model.decode)


@pytest.mark.parametrize('field,value,message', [
    ('num_levels', 1, 'num_levels'),
    ('dropout', 1.0, 'dropout'),
    ('norm', 'batch', 'norm'),
    ('checkerboard', 'diag', 'checkerboard'),
])
def test_bad_model_config_is_named(tiny_config, field, value, message):
  tiny_config[field] = value
  with pytest.raises(ValueError, match=message):  # where the model is made, before any init
    FlowPlusPlus(tiny_config)


def test_bad_layout_is_named(tiny_config):
  tiny_config.main.layout = 'checker1 s2d s2d s2d s2d'
  with pytest.raises(ValueError, match='s2d needs even'):
    init_model(FlowPlusPlus(tiny_config), _images((8, 8, 3)))


@pytest.mark.parametrize('levels', [32, 8])
def test_dequantizer_context_sees_x_over_levels_minus_half(levels):
  """As the official launchers' x / 32 - 0.5 and x / 8 - 0.5: the context network's first
  conv gets the two checkerboard halves of x / L - 0.5."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  cfg = tiny_model_config((4, 4, 1), num_levels=levels, dropout=0.0)
  model = FlowPlusPlus(cfg)
  x = _images((4, 4, 1), levels, batch=2)
  variables = init_model(model, x)
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.module.name == 'proj' and context.method_name == '__call__':
      seen.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, jax.random.PRNGKey(0))
  expected = np.asarray(x, np.float32) / levels - 0.5
  halves = np.concatenate([expected[:, :, 0::2], expected[:, :, 1::2]], axis=-1)
  np.testing.assert_allclose(np.asarray(seen[0]), halves, rtol=0, atol=1e-7)
