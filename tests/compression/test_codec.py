"""The image codec on a tiny Flow++ (digits:tiny, scanned layers as trained): exact round
trips at several batch sizes, the codelength against the model's own ELBO, the file's
fingerprint, and damaged or foreign files refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax import bijectors as bij
from flowpp_jax.compression import codec as codec_lib
from flowpp_jax.compression.codec import DELTA, GRID_BITS, CodecError, ImageCodec
from flowpp_jax.compression.coder import CoderRangeError, Stack, seed_words
from flowpp_jax.compression.flow_coding import coding, from_grid, to_grid
from flowpp_jax.data import datasets
from flowpp_jax.model import FlowPlusPlus, init_variables
from conftest import load_config


@pytest.fixture(scope='module')
def tiny():
  cfg = load_config('digits', 'tiny').model
  model = FlowPlusPlus(cfg)
  x = np.asarray(datasets.load_split('digits', 'test')[np.arange(16)])
  params = init_variables(model, jnp.asarray(x), jax.random.PRNGKey(1))['params']
  return cfg, model, params, ImageCodec(cfg, params), x


@pytest.mark.parametrize('count, batch_size', [(7, 1), (7, 3), (7, 7)])
def test_round_trip_is_exact_at_every_batch_size(tiny, count, batch_size):
  *_, codec, x = tiny
  images = x[:count]
  data = codec.encode(images, batch_size=batch_size)
  np.testing.assert_array_equal(codec.decode(data), images)
  report = codec.last_report
  assert len(report['batch_bits']) == len(codec_lib.batches(count, batch_size))
  assert report['file_bytes'] == len(data)


def test_codelength_is_the_elbo_of_the_noise_used(tiny):
  # One batch on a stack with plenty of bits: it grows by -log2 p(x + u) + log2 q(u | x) at
  # the u the coder drew, as the model computes them (scanned, without any coding).
  _, model, params, codec, x = tiny
  stack = Stack(seed_words(1 << 14))
  before = stack.num_bits()
  u, eps = codec.encode_batch(stack, x)
  assert u.min() >= 0 and u.max() < 1 << GRID_BITS
  growth = stack.num_bits() - before
  xf = jnp.asarray(x, jnp.float32)
  log_px = model.apply({'params': params}, xf + from_grid(u, DELTA),
                       method=FlowPlusPlus.log_density)
  _, log_q = model.apply({'params': params}, xf, from_grid(eps, DELTA),
                         method=lambda m, x, e: m.dequantizer.from_noise(x, e))
  elbo_bits = -float(np.sum(np.asarray(log_px, np.float64) - np.asarray(log_q, np.float64)))
  elbo_bits /= np.log(2)
  assert abs(growth / elbo_bits - 1) < 3e-3  # measured 6e-4 (3.0098 against 3.0079 bits/dim)
  # The codec's own ELBO (unrolled layers, jitted) is the same number.
  np.testing.assert_allclose(np.sum(codec.elbo_bits(x, u, eps)), elbo_bits, rtol=1e-5)


def test_the_sigmoid_keeps_u_inside_its_bin():
  # Pre-sigmoid values out to where float32's sigmoid is 1 and beyond: every u popped lies
  # strictly inside (0, 1), and the inverse pops the inputs back; far beyond, a clear error.
  s = jnp.asarray(np.array([[-40.0, -17.0, -9.0, -8.3, -8.0, -7.0, -5.0, 0.0, 5.0, 7.0, 8.0,
                             8.3, 9.0, 17.0, 40.0]]), jnp.float32)
  s = from_grid(to_grid(s, DELTA), DELTA)
  seed = seed_words(256)
  stack = Stack(seed)
  apply = lambda v, inverse: bij.Sigmoid().apply({}, v, inverse=inverse)[0]
  with coding(stack, 2.0 ** -8, DELTA):
    u = to_grid(apply(s, False), DELTA)
    assert u.min() >= 1 and u.max() <= (1 << GRID_BITS) - 1
    stack.decoder = True  # the inverse reads what the forward wrote
    back = apply(from_grid(u, DELTA), True)
  np.testing.assert_array_equal(back, s)
  np.testing.assert_array_equal(stack.words(), seed)
  with pytest.raises(CoderRangeError, match='range'):
    with coding(Stack(seed), 2.0 ** -8, DELTA):
      apply(jnp.full((1, 3), 80.0), False)


def test_the_fingerprint_changes_with_every_parameter_and_the_config(tiny):
  cfg, _, params, codec, _ = tiny
  leaves, treedef = jax.tree_util.tree_flatten(params)
  prints = {codec.fingerprint}
  for i, leaf in enumerate(leaves):
    changed = np.array(leaf)
    changed.flat[0] = np.nextafter(changed.flat[0], np.float32(np.inf))
    tree = jax.tree_util.tree_unflatten(treedef, leaves[:i] + [changed] + leaves[i + 1:])
    prints.add(codec_lib.fingerprint(cfg, tree))
  other = cfg.copy_and_resolve_references()
  other.main.components += 1
  prints.add(codec_lib.fingerprint(other, params))
  assert len(prints) == len(leaves) + 2


@pytest.fixture(scope='module')
def encoded(tiny):
  *_, codec, x = tiny
  return codec.encode(x[:2], batch_size=2)


@pytest.mark.parametrize('damage, message', [
    (lambda d: d[:-5], 'truncated or corrupted'),
    (lambda d: d[:40], 'truncated or corrupted'),
    (lambda d: b'PNG0' + d[4:], 'not a flowpp_jax compressed file'),
    (lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], 'truncated or corrupted'),
    (lambda d: d[:-40] + bytes([d[-40] ^ 128]) + d[-39:], 'truncated or corrupted'),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), 'truncated or corrupted'),
])
def test_a_damaged_file_is_refused(tiny, encoded, damage, message):
  *_, codec, _ = tiny
  with pytest.raises(CodecError, match=message):
    codec.decode(damage(encoded))


def test_another_models_file_is_refused(tiny, encoded):
  cfg, _, params, _, _ = tiny
  other = jax.tree_util.tree_map(lambda a: a * 1.001, params)
  with pytest.raises(CodecError, match='another model'):
    ImageCodec(cfg, other).decode(encoded)


@pytest.mark.parametrize('images, message', [
    (np.zeros((2, 8, 4, 1), np.uint8), 'shape'),
    (np.zeros((2, 8, 8), np.uint8), 'shape'),
    (np.zeros((2, 8, 8, 1), np.float32), 'uint8'),
    (np.full((2, 8, 8, 1), 17, np.uint8), 'num_levels'),
    (np.zeros((0, 8, 8, 1), np.uint8), 'no images'),
])
def test_bad_images_are_refused(tiny, images, message):
  *_, codec, _ = tiny
  with pytest.raises(CodecError, match=message):
    codec.encode(images)
