"""flowpp_jax.nn.layers' elementwise pieces: concat_elu's one-expm1 form against
jax.nn.elu of the concatenation, and plain_array against the bias it stands for, in value and
gradient, bit for bit (both are rewritings for speed, not approximations)."""
import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.nn.backend import plain_array
from flowpp_jax.nn.layers import Conv, concat_elu, gate


def _reference_concat_elu(x):
  return jax.nn.elu(jnp.concatenate([x, -x], axis=-1))


def _edge_values(dtype):
  """Zeros of both signs, tiny, ordinary and large magnitudes, both signs."""
  tiny = np.finfo(dtype).tiny
  values = np.array([0.0, -0.0, tiny, -tiny, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 1.0, -1.0,
                     3.0, -3.0, 20.0, -20.0, 88.0, -88.0, 1e30, -1e30], dtype)
  rng = np.random.default_rng(0)
  return np.concatenate([values, rng.normal(size=236).astype(dtype) * 4]).reshape(4, 8, 8)


def test_concat_elu_equals_elu_of_the_concatenation_bitwise():
  x = jnp.asarray(_edge_values(np.float32))
  got, want = concat_elu(x), _reference_concat_elu(x)
  assert got.shape == (4, 8, 16) and got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # Signs of zeros too: elu(-0.0) = expm1(-0.0) = -0.0.
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def test_concat_elu_gradient_equals_autodiff_of_the_reference_bitwise():
  x = jnp.asarray(_edge_values(np.float32))
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 16)), jnp.float32)

  def vjp(fn):
    return jax.grad(lambda x: jnp.sum(fn(x) * cotangent))(x)
  got, want = vjp(concat_elu), vjp(_reference_concat_elu)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # At exactly zero both take the expm1 branch: d/dx [elu(x), elu(-x)] = [1, -1].
  zero = jnp.zeros((1, 1))
  np.testing.assert_array_equal(jax.jacobian(lambda x: concat_elu(x)[0])(zero)[:, 0],
                                np.array([[1.0], [-1.0]], np.float32))


def test_concat_elu_under_scan_and_vmap_matches_the_reference():
  """As the scanned conditioner runs it: inside lax.scan over stacked biases, per example."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 5, 6)), jnp.float32)
  biases = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)

  def run(act):
    def body(h, b):
      c = act(h + plain_array(b))
      return gate(c) + h, None
    return jax.vmap(lambda x: lax.scan(body, x, biases)[0])(x)
  got, want = jax.jit(lambda: run(concat_elu))(), jax.jit(lambda: run(_reference_concat_elu))()
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_plain_array_is_the_bias_exactly_in_value_and_gradient():
  rng = np.random.default_rng(3)
  b = jnp.asarray(rng.normal(size=192) * np.logspace(-30, 30, 192), jnp.float32)
  np.testing.assert_array_equal(np.asarray(jax.jit(plain_array)(b)), np.asarray(b))
  cotangent = jnp.asarray(rng.normal(size=192), jnp.float32)
  grad = jax.grad(lambda b: jnp.sum(plain_array(b) * cotangent))(b)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(cotangent))


def test_conv_output_is_unchanged_by_plain_array():
  """A 1x1 Conv, whose bias goes through plain_array, gives x W + b bit for bit."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  conv = Conv(12, 1)
  params = conv.init(jax.random.PRNGKey(0), x)['params']
  got = jax.jit(lambda p, x: conv.apply({'params': p}, x))(params, x)
  want = jax.jit(lambda p, x: jnp.einsum('bhwc,cd->bhwd', x, p['W']) + p['b'])(params, x)
  assert np.max(np.abs(np.asarray(params['b']))) > 0  # data-dependent init: a real bias
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
