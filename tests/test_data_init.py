"""Data-dependent initialisation: statistics of each layer's output on the batch init saw.

What these tests establish, on a batch of 64 random inputs whose mean (|mean| up to ~6) and
standard deviation (0.3 to 4) differ per position and per channel, so that an identity or a
wrongly reduced initialisation fails:
  * Norm: after ``init`` its output on that batch has, at every position and channel, mean 0
    and standard deviation ``init_scale`` over the batch axis; on a tuple each part is
    standardised with its own parameters; g, b have shape [H, W, C].
  * ActNorm: per channel, mean 0 and std ``init_scale`` over batch and space (and, as g and b
    are shared over positions, the per-position statistics are NOT standardised); g has C
    entries.
  * Both: the parameters are fixed after init. Applying them to an affinely changed batch
    (2x + 1) gives std 2 * init_scale: nothing re-normalises on later calls.
  * nn.layers.Conv (kernel 1 and 3, weight_norm False and True, init_scale 1.0 and 0.1): the
    output on the init batch has per-channel mean 0 and std init_scale over batch and space.
  * A whole Conditioner (with a context input; and a weight-normed variant with the concat-ELU
    1x1 output head): at init, every Conv inside it, read through capture_intermediates, has
    per-channel mean 0 and std equal to its own init_scale (1.0 for proj_in, c1, a_proj,
    proj1; 0.1 for the gated residual branches c2, proj2 and for proj_out), so proj_out's
    output, and hence the conditioner's, has std 0.1 per channel.
"""
import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax.bijectors import ActNorm, Norm
from flowpp_jax.nn.conditioner import Conditioner
from flowpp_jax.nn.layers import Conv

N = 64  # Batch size of the init batch.
# Compiled with XLA's backend optimisation off: halves the compile time of the conditioner.
_jit_quick = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
# Float32 statistics of a standardised batch: means within MEAN_ATOL * scale of 0, standard
# deviations within STD_RTOL of the target.
MEAN_ATOL = 1e-5
STD_RTOL = 1e-4


def _batch(key, shape):
  """[N, H, W, C] inputs with mean ~ N(0, 3^2) and std in [0.3, 4], per position and channel."""
  k1, k2, k3 = jax.random.split(key, 3)
  mean = 3.0 * jax.random.normal(k1, shape[1:])
  std = jnp.exp(jax.random.uniform(k2, shape[1:], minval=np.log(0.3), maxval=np.log(4.0)))
  x = mean + std * jax.random.normal(k3, shape)
  # Precondition: the raw batch is far from standardised, per position and per channel.
  assert float(jnp.max(jnp.abs(jnp.mean(x, axis=0)))) > 1.0
  per_position_std = jnp.std(x, axis=0)
  assert float(jnp.min(per_position_std)) < 0.5 and float(jnp.max(per_position_std)) > 2.0
  assert float(jnp.max(jnp.abs(jnp.std(x, axis=(0, 1, 2)) - 1.0))) > 0.3
  return x


def _assert_standardised(y, axes, scale):
  """Mean 0 and std ``scale`` of y over ``axes``, for every remaining index."""
  y = np.asarray(y, np.float64)
  mean, std = y.mean(axis=axes), y.std(axis=axes)
  np.testing.assert_allclose(mean, 0.0, atol=MEAN_ATOL * max(scale, 1.0))
  np.testing.assert_allclose(std, scale, rtol=STD_RTOL)


# ----------------------------------------------------------------------------------------
# Norm and ActNorm.


@pytest.mark.parametrize('init_scale', [1.0, 0.5])
def test_norm_standardises_each_position(init_scale):
  x = _batch(jax.random.PRNGKey(0), (N, 4, 4, 3))
  norm = Norm(init_scale=init_scale)
  variables = jax.jit(norm.init)(jax.random.PRNGKey(1), x)
  chex.assert_shape((variables['params']['g0'], variables['params']['b0']), (4, 4, 3))
  y, log_det = jax.jit(norm.apply)(variables, x)
  _assert_standardised(y, axes=0, scale=init_scale)
  # The log-det is sum log g, g = init_scale / std per position.
  expected = np.sum(np.log(init_scale / np.asarray(x, np.float64).std(axis=0)))
  np.testing.assert_allclose(np.asarray(log_det), np.full(N, expected), rtol=1e-5)
  # Parameters are fixed after init: an affinely changed batch is not re-standardised.
  y2, _ = jax.jit(norm.apply)(variables, 2.0 * x + 1.0)
  np.testing.assert_allclose(np.asarray(y2).std(axis=0), 2.0 * init_scale, rtol=STD_RTOL)


def test_norm_on_a_tuple_standardises_each_part_separately():
  k1, k2 = jax.random.split(jax.random.PRNGKey(2))
  x1 = _batch(k1, (N, 4, 2, 3))
  x2 = 2.0 - 0.5 * _batch(k2, (N, 4, 2, 3))  # Different statistics from x1.
  variables = jax.jit(Norm().init)(jax.random.PRNGKey(3), (x1, x2))
  assert set(variables['params']) == {'g0', 'b0', 'g1', 'b1'}
  (y1, y2), _ = jax.jit(Norm().apply)(variables, (x1, x2))
  _assert_standardised(y1, axes=0, scale=1.0)
  _assert_standardised(y2, axes=0, scale=1.0)


@pytest.mark.parametrize('init_scale', [1.0, 0.5])
def test_actnorm_standardises_each_channel(init_scale):
  x = _batch(jax.random.PRNGKey(4), (N, 4, 4, 3))
  actnorm = ActNorm(init_scale=init_scale)
  variables = jax.jit(actnorm.init)(jax.random.PRNGKey(5), x)
  assert variables['params']['g0'].size == 3 and variables['params']['b0'].size == 3
  y, log_det = jax.jit(actnorm.apply)(variables, x)
  _assert_standardised(y, axes=(0, 1, 2), scale=init_scale)
  # Shared over positions: per position the output is not standardised.
  per_position_std = np.asarray(y).std(axis=0)
  assert per_position_std.max() > 4 * per_position_std.min()
  # The log-det is H * W * sum_c log g_c, g_c = init_scale / std_c.
  std_c = np.asarray(x, np.float64).std(axis=(0, 1, 2))
  expected = 16 * np.sum(np.log(init_scale / std_c))
  np.testing.assert_allclose(np.asarray(log_det), np.full(N, expected), rtol=1e-5)
  y2, _ = jax.jit(actnorm.apply)(variables, 2.0 * x + 1.0)
  np.testing.assert_allclose(np.asarray(y2).std(axis=(0, 1, 2)), 2.0 * init_scale,
                             rtol=STD_RTOL)


# ----------------------------------------------------------------------------------------
# Conv.


@pytest.mark.parametrize('init_scale', [1.0, 0.1])
@pytest.mark.parametrize('weight_norm', [False, True], ids=['plain', 'weight_norm'])
@pytest.mark.parametrize('kernel_size', [1, 3])
def test_conv_output_has_zero_mean_and_init_scale_std(kernel_size, weight_norm, init_scale):
  x = _batch(jax.random.PRNGKey(6), (N, 4, 4, 3))
  conv = Conv(5, kernel_size, init_scale, weight_norm)
  variables = _jit_quick(conv.init)(jax.random.PRNGKey(7), x)
  params = variables['params']
  assert set(params) == ({'V', 'g', 'b'} if weight_norm else {'W', 'b'})
  kernel = params['V' if weight_norm else 'W']
  assert kernel.shape == ((3, 5) if kernel_size == 1 else (3, 3, 3, 5))
  y = _jit_quick(conv.apply)(variables, x)
  chex.assert_shape(y, (N, 4, 4, 5))
  _assert_standardised(y, axes=(0, 1, 2), scale=init_scale)
  # Fixed after init: a rescaled batch gives a rescaled (not re-standardised) output.
  y2 = _jit_quick(conv.apply)(variables, 3.0 * x)
  np.testing.assert_allclose(np.asarray(y2 - y), 2.0 * np.asarray(y - params['b']),
                             rtol=1e-4, atol=1e-4 * init_scale)


# ----------------------------------------------------------------------------------------
# The whole conditioner.


_EXPECTED_SCALE = {'proj_in': 1.0, 'c1': 1.0, 'a_proj': 1.0, 'proj1': 1.0, 'c2': 0.1,
                   'proj2': 0.1, 'proj_out': 0.1}


@pytest.mark.parametrize('net_kwargs, with_context', [
    (dict(), True),
    (dict(weight_norm=True, out_concat_elu=True, out_kernel=1), False),
], ids=['plain_with_context', 'weight_norm_concat_elu_nin'])
def test_conditioner_convs_start_at_their_init_scale(net_kwargs, with_context):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(8), 3)
  x = _batch(k1, (N, 4, 2, 2))
  context = _batch(k2, (N, 4, 2, 3)) if with_context else None
  num_outputs = 14
  net = Conditioner(filters=8, blocks=1, heads=2, **net_kwargs)
  # Read every Conv's output in the init pass itself: the Conv computes it from its final,
  # data-initialised parameters. Only __call__ is captured (Conv._apply also runs inside the
  # param initialisers, and, in apply, inside flax's eval_shape check of them).
  capture = lambda mdl, method: isinstance(mdl, Conv) and method == '__call__'

  def init(key, x, context):
    return net.init_with_output(key, x, context, num_outputs=num_outputs,
                                capture_intermediates=capture)

  out, variables = _jit_quick(init)(k3, x, context)
  chex.assert_shape(out, (N, 4, 2, 2, num_outputs))
  captured = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables['intermediates']))
  seen = set()
  for path, (y,) in captured.items():
    name = path[-2]  # path = (..., conv name, '__call__')
    seen.add(name)
    if 'blocks' in path:  # the scanned GatedStack stacks its blocks' values: [blocks, ...]
      (y,) = y
    _assert_standardised(y, axes=(0, 1, 2), scale=_EXPECTED_SCALE[name])
  expected_names = set(_EXPECTED_SCALE) - (set() if with_context else {'a_proj'})
  assert seen == expected_names
  # The conditioner's output is proj_out's, reshaped: std 0.1 for every (channel, output).
  _assert_standardised(out, axes=(0, 1, 2), scale=0.1)
