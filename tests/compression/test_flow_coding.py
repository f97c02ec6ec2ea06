"""Local bits-back coding through whole flows of a tiny Flow++: the main flow and the
dequantizer's conditional flow round-trip exactly, and the main flow's codelength is
-log2 p(y) delta^D of the model's own log-density."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax import bijectors as bij
from flowpp_jax.compression.coder import Stack, seed_words
from flowpp_jax.compression.flow_coding import GridError, coding
from flowpp_jax.model import FlowPlusPlus, init_variables
from conftest import ROOT

BITS = 16
DELTA = 2.0 ** -BITS
SIGMA = 2.0 ** -8


@pytest.fixture(scope='module')
def tiny():
  spec = importlib.util.spec_from_file_location('digits', ROOT / 'configs' / 'digits.py')
  configs = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(configs)
  cfg = configs.get_config('tiny').model
  cfg.scan_layers = False  # coded layers must see concrete values
  model = FlowPlusPlus(cfg)
  x = jax.random.randint(jax.random.PRNGKey(0), (16, 8, 8, 1), 0, 17).astype(jnp.uint8)
  return model, init_variables(model, x, jax.random.PRNGKey(1))['params'], x


def _main(module, value, inverse):
  return module.main_flow(value, inverse=inverse)[0]


def _grid(v):
  return np.round(np.asarray(v, np.float64) / DELTA).astype(np.int64)


def _latent_push(stack, z_k):
  stack.encode(z_k, np.zeros(z_k.shape), np.full(z_k.shape, 1 / DELTA))


def test_main_flow_round_trip_and_codelength(tiny):
  model, params, x = tiny
  rng = np.random.default_rng(0)
  y_k = np.asarray(x, np.int64) * (1 << BITS) + rng.integers(0, 1 << BITS, x.shape)
  y = jnp.asarray(y_k * DELTA, jnp.float32)
  seed = seed_words(1 << 12)
  stack = Stack(seed)
  start = stack.num_bits()
  ledger = []
  with coding(stack, SIGMA, DELTA, ledger=ledger):
    z = model.apply({'params': params}, y, False, method=_main)
  flow_bits = stack.num_bits() - start
  _latent_push(stack, _grid(z))
  log_p = model.apply({'params': params}, y, method=FlowPlusPlus.log_density)
  dims = y_k.size
  ideal = -float(np.sum(np.asarray(log_p, np.float64))) / np.log(2) - dims * np.log2(DELTA)
  assert abs(stack.num_bits() - start - ideal) / dims < 0.01  # bits/dim; measured ~5e-4

  reader = Stack(stack.words(), decoder=True)
  z_k = reader.decode(np.zeros(z.shape), np.full(z.shape, 1 / DELTA))
  back_ledger = []
  with coding(reader, SIGMA, DELTA, ledger=back_ledger):
    y_back = model.apply({'params': params}, jnp.asarray(z_k * DELTA, jnp.float32), True,
                         method=_main)
  np.testing.assert_array_equal(_grid(y_back), y_k)
  np.testing.assert_array_equal(reader.words(), seed)

  # The ledger: one entry per coded call, its bits adding up to the flow's growth, each near
  # its own -log2 |det J|, whose sum is the model's log-det; the decoder's calls mirror them.
  _, log_det = model.apply({'params': params}, y, method=lambda m, v: m.main_flow(v))
  assert {c.layer for c in ledger} == {'LogitPreprocess', 'Norm', 'Pointwise',
                                       'MixLogisticCoupling'}
  assert sum(c.bits for c in ledger) == flow_bits
  for call in ledger:
    assert abs(call.bits + call.log2_det) < 0.01 * dims, call  # measured up to 8e-4 per dim
  np.testing.assert_allclose(sum(c.log2_det for c in ledger),
                             float(np.sum(log_det)) / np.log(2), rtol=1e-3)  # 3e-5
  assert [(c.path, c.inverse, -c.bits, c.log2_det) for c in reversed(back_ledger)] == [
      (c.path, not c.inverse, c.bits, c.log2_det) for c in ledger]


def _dequant_flow(module, value, x, inverse):
  context = module.dequantizer.context(x)
  return module.dequantizer.flow(value, context, inverse=inverse)[0]


def test_conditional_flow_inverse_then_forward_restores_the_stack(tiny):
  # The order in which a decoder returns the dequantization noise's bits: the flow's inverse
  # first (pops), then its forward (pushes).
  model, params, x = tiny
  rng = np.random.default_rng(1)
  u_k = rng.integers(1 << 10, (1 << BITS) - (1 << 10), x.shape)
  seed = seed_words(1 << 12)
  stack = Stack(seed)
  xf = jnp.asarray(x, jnp.float32)
  with coding(stack, SIGMA, DELTA):
    stack.decoder = True  # a decoder's pops first, then the pushes an encoder's pops mirror
    eps = model.apply({'params': params}, jnp.asarray(u_k * DELTA, jnp.float32), xf, True,
                      method=_dequant_flow)
    stack.decoder = False
    u = model.apply({'params': params}, jnp.asarray(_grid(eps) * DELTA, jnp.float32), xf,
                    False, method=_dequant_flow)
  np.testing.assert_array_equal(_grid(u), u_k)
  np.testing.assert_array_equal(stack.words(), seed)


def test_a_value_off_the_grid_is_refused(tiny):
  model, params, x = tiny
  with pytest.raises(GridError, match='does not fit the coding grid'):
    with coding(Stack(seed_words(64)), SIGMA, DELTA):
      model.apply({'params': params}, jnp.full(x.shape, 300.0), False, method=_main)


def _pixels(levels):
  def draw(rng, shape):
    return rng.integers(0, levels, shape) + rng.uniform(0, 1, shape)
  return draw


# Measured: -3e-4, 1e-4 and 6e-3 bits/dim; with sigma in the layers' input units, 0.020 for
# 256-level logits (their outputs' Gaussians a grid step wide) and 0.014 for the Sigmoid.
@pytest.mark.parametrize('layer, draw, bound', [
    (bij.LogitPreprocess(num_levels=256), _pixels(256), 1e-3),
    (bij.LogitPreprocess(num_levels=17), _pixels(17), 1e-3),
    (bij.Sigmoid(), lambda rng, shape: rng.normal(0.0, 2.0, shape), 1e-2),
], ids=['logit-256', 'logit-17', 'sigmoid'])
def test_a_layer_that_changes_units_codes_at_its_log_det(layer, draw, bound):
  # At the codec's grid and sigma.
  delta, sigma = 2.0 ** -14, 2.0 ** -9
  x = np.round(draw(np.random.default_rng(3), (64, 8, 8, 3)) / delta) * delta
  x = jnp.asarray(x, jnp.float32)
  seed = seed_words(1 << 15)
  stack = Stack(seed)
  apply = lambda v, inverse: layer.apply({}, v, inverse=inverse)
  with coding(stack, sigma, delta):
    y = apply(x, False)[0]
  log_det = float(np.sum(np.asarray(apply(x, False)[1], np.float64))) / np.log(2)
  overhead = (stack.num_bits() - 32 * len(seed) + log_det) / x.size
  assert abs(overhead) < bound, overhead  # bits/dim
  reader = Stack(stack.words(), decoder=True)
  with coding(reader, sigma, delta):
    back = apply(y, True)[0]
  np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
  np.testing.assert_array_equal(reader.words(), seed)
