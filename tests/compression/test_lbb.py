"""The entropy coder and the per-layer local bits-back coders, each alone: exact round trips,
and codelengths against scipy's Gaussian masses and against -log2 |det J| of the layer."""
import numpy as np
import pytest
from scipy import stats

from flowpp_jax.compression import lbb
from flowpp_jax.compression.coder import CoderRangeError, Stack, seed_words

DELTA = 2.0 ** -16  # grid step of the layers' inputs and outputs
SIGMA = 2.0 ** -8  # the local Gaussians' scale, in input units


def _gaussians(rng, n):
  """Means anywhere on a wide grid, stds from a fraction of a bin to 1e6 bins (the coarse
  split's range)."""
  mean = rng.uniform(-1e9, 1e9, n)
  std = np.exp(rng.uniform(np.log(0.1), np.log(1e6), n))
  k = np.round(mean + std * rng.standard_normal(n)).astype(np.int64)
  return k, mean, std


def test_stack_round_trip_restores_the_seed_exactly():
  rng = np.random.default_rng(0)
  seed = seed_words(64)
  stack = Stack(seed)
  draws = []
  for _ in range(3):  # pops (bits back) interleaved with pushes, as LBB does
    k, mean, std = _gaussians(rng, 500)
    popped = stack.decode(mean, std)
    stack.encode(k, mean, std)
    draws.append((k, mean, std, popped))
  reader = Stack(stack.words())
  for k, mean, std, popped in reversed(draws):
    np.testing.assert_array_equal(reader.decode(mean, std), k)
    reader.encode(popped, mean, std)
  np.testing.assert_array_equal(reader.words(), seed)


def test_codelength_is_the_gaussian_bin_mass():
  rng = np.random.default_rng(1)
  n = 20000
  mean = rng.uniform(-50, 50, n)
  std = np.exp(rng.uniform(np.log(2.0), np.log(5e4), n))  # plain and coarse-split models
  k = np.round(mean + std * rng.standard_normal(n)).astype(np.int64)
  stack = Stack()
  stack.encode(k, mean, std)
  mass = stats.norm.cdf(k + 0.5, mean, std) - stats.norm.cdf(k - 0.5, mean, std)
  ideal = -np.log2(mass).sum()
  assert stack.num_bits() == pytest.approx(ideal, rel=2e-4)


def test_a_value_outside_the_range_is_refused():
  with pytest.raises(CoderRangeError, match='outside the 4-std range'):
    Stack().encode(np.array([1000]), np.array([0.0]), np.array([10.0]))


def test_seed_words_are_fixed_and_usable():
  words = seed_words(5)
  np.testing.assert_array_equal(words, seed_words(5))
  assert words.dtype == np.uint32 and words[-1] != 0
  assert not np.array_equal(words, seed_words(5, b'other'))


def _sinh(x):
  return np.sinh(x), np.cosh(x)


def _grid(rng, shape, low=-2.0, high=2.0):
  return np.round(rng.uniform(low, high, shape) / DELTA).astype(np.int64)


def test_elementwise_layer_round_trip_and_codelength():
  rng = np.random.default_rng(2)
  x_k = _grid(rng, (32, 16, 16, 3))
  seed = seed_words(1 << 16)
  stack = Stack(seed)
  start = stack.num_bits()
  y_k = lbb.encode_elementwise(stack, x_k, _sinh, np.arcsinh, sigma=SIGMA, delta_in=DELTA,
                               delta_out=DELTA)
  # Equal grids: the layer costs -log2 f'(x) per value.
  ideal = -np.log2(np.cosh(x_k * DELTA)).sum()
  overhead = (stack.num_bits() - start - ideal) / x_k.size
  assert 0 <= overhead < 5e-4
  np.testing.assert_allclose(y_k * DELTA, np.sinh(x_k * DELTA), atol=10 * SIGMA * np.cosh(2))
  reader = Stack(stack.words())
  np.testing.assert_array_equal(
      lbb.decode_elementwise(reader, y_k, _sinh, np.arcsinh, sigma=SIGMA, delta_in=DELTA,
                             delta_out=DELTA), x_k)
  np.testing.assert_array_equal(reader.words(), seed)


def test_elementwise_layer_between_grids_pays_their_ratio():
  rng = np.random.default_rng(3)
  x_k = _grid(rng, (20000,), 0.0, 1.0)
  scale = lambda x: (8.0 * x, np.full(x.shape, 8.0))
  stack = Stack(seed_words(1 << 15))
  start = stack.num_bits()
  lbb.encode_elementwise(stack, x_k, scale, lambda y: y / 8.0, sigma=SIGMA, delta_in=DELTA,
                         delta_out=DELTA / 4)
  # -log2 8 for the slope, -log2(delta_in / delta_out) = -2 for the finer output grid, whose
  # values the next layer then pays 2 bits more for.
  assert (stack.num_bits() - start) / x_k.size == pytest.approx(-5.0, abs=5e-4)


def test_linear_layer_round_trip_and_codelength():
  rng = np.random.default_rng(4)
  channels = 6
  weight = np.eye(channels) + 0.4 * rng.standard_normal((channels, channels))
  x_k = _grid(rng, (16, 8, 8, channels))
  seed = seed_words(1 << 15)
  stack = Stack(seed)
  start = stack.num_bits()
  y_k = lbb.encode_linear(stack, x_k, weight, sigma=SIGMA, delta_in=DELTA, delta_out=DELTA)
  positions = x_k.size // channels
  ideal = -np.log2(abs(np.linalg.det(weight))) * positions
  overhead = (stack.num_bits() - start - ideal) / x_k.size
  assert 0 <= overhead < 1e-3
  reader = Stack(stack.words())
  np.testing.assert_array_equal(
      lbb.decode_linear(reader, y_k, weight, sigma=SIGMA, delta_in=DELTA, delta_out=DELTA), x_k)
  np.testing.assert_array_equal(reader.words(), seed)
