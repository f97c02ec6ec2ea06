"""The entropy coder and the per-layer local bits-back coders, each alone: exact round trips,
and codelengths against scipy's Gaussian masses and against -log2 |det J| of the layer."""
import constriction
import numpy as np
import pytest
from scipy import stats

from flowpp_jax.compression import coder, lbb
from flowpp_jax.compression.coder import CoderRangeError, Stack, snap, seed_words

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
  reader = Stack(stack.words(), decoder=True)
  for k, mean, std, popped in reversed(draws):
    np.testing.assert_array_equal(reader.decode(mean, std), k)
    reader.encode(popped, mean, std)
  np.testing.assert_array_equal(reader.words(), seed)


def _on_boundaries(rng, mean, std, share):
  """The same Gaussians with ``share`` of their means and of their stds moved onto a boundary
  of the snapping grid (where the two sides of a file may round apart)."""
  mean, std = mean.copy(), std.copy()
  pick = rng.random(mean.shape) < share
  fraction, exponent = np.frexp(std[pick])
  cells = np.floor(np.ldexp(fraction, coder.STD_BITS))  # in [256, 512): the boundary above
  std[pick] = np.ldexp(np.minimum(cells, 510) + 0.5, exponent - coder.STD_BITS)
  pick = rng.random(mean.shape) < share  # powers of two, where the std's exponent changes
  std[pick] = np.ldexp(1.0, np.frexp(std[pick])[1])
  pick = rng.random(mean.shape) < share
  _, snapped_std, _, _ = coder.snap(mean, std)
  shift = np.frexp(snapped_std[pick])[1] + coder.MEAN_STEP_LOG2
  mean[pick] = np.ldexp(np.floor(np.ldexp(mean[pick], -shift)) - coder.CELL_SHIFT, shift)
  return mean, std


def test_a_reader_whose_gaussians_drift_follows_the_writer():
  # Another machine computes each mean and std with its own last bits. Here the reader's are
  # the writer's moved by 1e-12 stds and 2^-44 of themselves (the largest drift measured
  # between environments is 7.0e-12 stds, docs/compression.md), and a tenth of them sit on a
  # snapping boundary, moved across it in opposite directions: the reader still decodes
  # exactly, and the stack returns to its seed.
  rng = np.random.default_rng(5)
  seed = seed_words(1 << 12)
  writer = Stack(seed)
  draws = []
  ambiguous = 0
  for _ in range(3):  # pops (bits back) and pushes, as LBB does
    k, mean, std = _gaussians(rng, 2000)
    mean, std = _on_boundaries(rng, np.clip(mean, -1e5, 1e5), std, 0.1)
    sign = rng.choice([-1.0, 1.0], mean.shape)
    theirs = (mean * (1 - sign * 2.0 ** -44) - sign * 1e-12 * std,
              std * (1 + sign * 2.0 ** -44))
    ambiguous += int(np.sum(coder.snap(mean, std)[2]))
    k = np.round(np.clip(k, mean - 3 * std, mean + 3 * std)).astype(np.int64)
    popped = writer.decode(mean, std)
    writer.encode(k, mean, std)
    draws.append((k, theirs, popped))
  assert ambiguous > 300  # the records carry them
  reader = Stack(writer.words(), decoder=True)
  for k, (mean, std), popped in reversed(draws):
    np.testing.assert_array_equal(reader.decode(mean, std), k)
    reader.encode(popped, mean, std)
  np.testing.assert_array_equal(reader.words(), seed)


def test_the_drift_measured_between_machines_breaks_raw_gaussians_and_not_ours():
  # Means 7.0e-12 stds apart (the largest drift measured between two environments,
  # docs/compression.md): constriction's Gaussians, given them as they are, decode other
  # symbols within the first 10^5 values (their fixed-point tables differ); the Stack, which
  # snaps them, decodes every one.
  rng = np.random.default_rng(6)
  n = 100000
  mean, std = rng.uniform(-3, 3, n), rng.uniform(0.5, 60, n)
  k = np.clip(np.round(mean + std * rng.standard_normal(n)), -255, 255).astype(np.int64)
  theirs = mean + 7.0e-12 * std
  raw = constriction.stream.model.QuantizedGaussian(-256, 256)
  writer = constriction.stream.stack.AnsCoder()
  writer.encode_reverse(k.astype(np.int32), raw, mean, std)
  reader = constriction.stream.stack.AnsCoder(writer.get_compressed())
  assert np.any(reader.decode(raw, theirs, std) != k)
  seed = seed_words(64)
  stack = Stack(seed)
  stack.encode(k, mean, std)
  ours = Stack(stack.words(), decoder=True)
  np.testing.assert_array_equal(ours.decode(theirs, std), k)
  np.testing.assert_array_equal(ours.words(), seed)


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
  # Plus the record of the roundings that another machine could make differently: under 40
  # bits for each (one here, among 40000 means and stds).
  records = 40 * int(np.sum(snap(mean, std)[2]))
  assert ideal <= stack.num_bits() <= ideal * (1 + 2e-4) + records


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
  reader = Stack(stack.words(), decoder=True)
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
  assert abs(overhead) < 1e-3  # the draws' spread: -1.5e-4 measured, +2e-4 at other draws
  reader = Stack(stack.words(), decoder=True)
  np.testing.assert_array_equal(
      lbb.decode_linear(reader, y_k, weight, sigma=SIGMA, delta_in=DELTA, delta_out=DELTA), x_k)
  np.testing.assert_array_equal(reader.words(), seed)
