"""Dropout's masks: backend.bernoulli against jax.random.bernoulli bit for bit (its written-out
threefry hash on the CPU, jax's own elsewhere), and layers.Dropout against flax's Dropout."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flowpp_jax.nn import backend, layers

try:  # Older jax versions.
  from jax.experimental import enable_x64
except ImportError:  # Newer jax: the context manager lives at top level.
  enable_x64 = jax.enable_x64

SHAPES = [(7,), (3, 5, 2), (1, 32, 16, 192)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('p', [0.8, 0.5, 0.123])
def test_bernoulli_is_jax_random_bernoulli_bit_for_bit(shape, p):
  """Under jit, vmap over keys (the per-example draw) and scan (the scanned blocks)."""
  keys = jax.random.split(jax.random.PRNGKey(11), 6)
  ours = lambda k: backend.bernoulli(k, p, shape)
  theirs = lambda k: jax.random.bernoulli(k, p, shape)
  for key in keys[:2]:
    np.testing.assert_array_equal(jax.jit(ours)(key), theirs(key))
  np.testing.assert_array_equal(jax.jit(jax.vmap(ours))(keys), jax.vmap(theirs)(keys))
  scanned = lambda draw: lax.scan(lambda c, k: (c, draw(k)), 0, keys)[1]
  np.testing.assert_array_equal(jax.jit(lambda: scanned(ours))(), scanned(theirs))
  frequency = float(jnp.mean(jax.vmap(ours)(keys)))
  assert abs(frequency - p) < 5 / np.sqrt(keys.shape[0] * np.prod(shape))


def test_bernoulli_writes_the_hash_out_on_the_cpu():
  """On the CPU the masks come from one fused expression: no loop in the program, where jax's
  own draw lowers to one (the reason the written-out hash exists)."""
  if jax.default_backend() != 'cpu':
    pytest.skip("the written-out hash is the CPU backend's")
  key, shape = jax.random.PRNGKey(0), (4, 8)
  assert backend._written_out_bernoulli_applies(key, shape)
  ours = jax.jit(lambda k: backend.bernoulli(k, 0.8, shape)).lower(key).as_text()
  theirs = jax.jit(lambda k: jax.random.bernoulli(k, 0.8, shape)).lower(key).as_text()
  assert 'while' not in ours and 'while' in theirs


def test_bernoulli_falls_back_to_jax_where_its_bits_would_differ():
  """New-style typed keys and float64 draws (x64 on) go to jax.random.bernoulli."""
  typed = jax.random.key(5)
  assert not backend._written_out_bernoulli_applies(typed, (3, 4))
  np.testing.assert_array_equal(backend.bernoulli(typed, 0.7, (3, 4)),
                                jax.random.bernoulli(typed, 0.7, (3, 4)))
  with enable_x64(True):
    key = jax.random.PRNGKey(5)
    assert not backend._written_out_bernoulli_applies(key, (3, 4))
    np.testing.assert_array_equal(backend.bernoulli(key, 0.7, (3, 4)),
                                  jax.random.bernoulli(key, 0.7, (3, 4)))


class _TwoDropouts(nn.Module):
  """Two dropouts in a row, as a block draws them: each its own rng from the module path."""
  dropout_class: type

  @nn.compact
  def __call__(self, x, deterministic):
    x = self.dropout_class(0.2)(x, deterministic=deterministic)
    return self.dropout_class(0.2)(x * 2.0, deterministic=deterministic)


def test_dropout_layer_is_flax_dropout_mask_for_mask():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 6)), jnp.float32)
  rngs = {'dropout': jax.random.PRNGKey(3)}
  ours = _TwoDropouts(layers.Dropout).apply({}, x, False, rngs=rngs)
  theirs = _TwoDropouts(nn.Dropout).apply({}, x, False, rngs=rngs)
  np.testing.assert_array_equal(ours, theirs)
  assert 0.2 < float(jnp.mean(ours == 0)) < 0.5  # two layers at 0.2: 1 - 0.8^2 = 0.36
  np.testing.assert_array_equal(_TwoDropouts(layers.Dropout).apply({}, x, True), x * 2.0)
