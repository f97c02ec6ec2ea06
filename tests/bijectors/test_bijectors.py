"""Tests for flowpp_jax.bijectors: one shared harness run on every bijector, plus layout tests.

What these tests establish, for every entry of CASES (LogitPreprocess, Sigmoid, Norm, ActNorm,
Pointwise, on arrays and on tuples; every split alone, as a merge, and inside split/merge with
and without a TupleFlip; SpaceToDepth and its inverse; TupleFlip; MixLogisticCoupling inside a
checkerboard split with a ``context`` input given to the Chain, and inside a channel split;
AffineCoupling inside a 2-D checkerboard split within a chain of eight layers (two of them
nested split/merge chains); Inverse(...) of Sigmoid, of SpaceToDepth and of chains holding
Norm and ActNorm, whose data-dependent init then runs in the inverse direction), with the
conditioners' output layers amplified after init so the couplings are far from the identity:
  * Shapes: the log-det has shape [B]; the inverse returns the input's structure.
  * Invertibility: inverse(forward(x)) == x in float32 to a tight, per-case tolerance (a few
    ulps of the data scale; the couplings add the bisection's ulp-level error), eagerly and
    under jax.jit, and jit gives the same values as eager.
  * The log-dets of the two directions agree: log_det_fwd(x) == -log_det_inv(forward(x)), to
    float32 rounding (eps32 * D relative).
  * The log-det is the true Jacobian log-determinant: in float64 (x64 enabled, params and
    inputs cast), jax.jacobian (reverse mode: the conditioner's attention, and its convs on
    CPU, define custom VJPs) of the whole batched map, flattened (tuples concatenated), is
    block diagonal over examples (the map is per-example, off-diagonal blocks exactly 0) and
    slogdet of each diagonal block equals the returned log-det to 1e-9 relative, in the
    forward direction and in the inverse one (through the coupling's bisection, whose
    custom_jvp supplies the derivative, transposed here). The returned log-det is float64
    there, so no layer or conditioner silently computes in float32.
  * jax.vmap over an extra leading axis of batches gives the per-batch results, in both
    directions, for initialised bijectors.
  * A conditional coupling really uses its context (changing it changes the output).
Layout tests: the splits, merges, TupleFlip and SpaceToDepth round-trip bit-exactly with a
log-det of exactly 0, and place every element where the documented layout says
(CheckerboardSplit: x1 = even columns; Checkerboard2DSplit: x1 = pixels with row+col even;
ChannelSplit: first half of the channels; SpaceToDepth: a loop-based numpy reference of
TensorFlow's space_to_depth, out channel = (dy*2 + dx)*C + c).
Pointwise: log-det == H*W*log|det W| from numpy float64 slogdet, per part of a tuple.
MixLogisticCoupling in float32 with |x2| up to 1e4 and mixture log-scales pushed below the
-7 clamp: output, log-det, inverse and the gradient of the log-det w.r.t. every parameter are
finite (and nonzero), and the inverse is backward stable (forward(inverse(y)) == y).
Every jit here uses XLA backend optimisation level 0 (see _jit_quick) to halve compile times.
"""
import dataclasses
import functools
import zlib
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax.bijectors import (ActNorm, AffineCoupling, Chain, ChannelSplit,
                                  Checkerboard2DSplit, CheckerboardSplit, Inverse,
                                  LogitPreprocess, MixLogisticCoupling, Norm, Pointwise,
                                  Sigmoid, SpaceToDepth, TupleFlip)
from flowpp_jax.nn.conditioner import Conditioner

try:  # Older jax versions.
  from jax.experimental import enable_x64
except ImportError:  # Newer jax: the context manager lives at top level.
  enable_x64 = jax.enable_x64

B, H, W, C = 2, 4, 4, 2
COMPONENTS = 4
CONTEXT_FEATURES = 3
NUM_LEVELS = 256
EPS32 = float(np.finfo(np.float32).eps)
# After init the conditioner's output projection (init_scale 0.1) is multiplied by this, so the
# couplings tested are far from the identity (outputs of order 1 rather than 0.1).
NET_GAIN = 10.0


# Everything jitted here is compiled with XLA's backend (LLVM) optimisation off: that halves the
# compile time, which dominates these tests, and changes no numerics (no fast-math either way).
_jit_quick = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


# ----------------------------------------------------------------------------------------
# Cases.


def _net():
  return Conditioner(filters=8, blocks=1, heads=2)


def _mixlog():
  return MixLogisticCoupling(_net(), components=COMPONENTS)


def _affine():
  return AffineCoupling(_net())


def _inside(split, *layers):
  """split -> layers -> merge, an array-to-array bijector."""
  return Chain([split] + list(layers) + [Inverse(split)])


def _normal(shape=(B, H, W, C), scale=1.5, shift=0.5):
  return lambda key: shift + scale * jax.random.normal(key, shape, jnp.float32)


def _uniform(lo, hi, shape=(B, H, W, C)):
  return lambda key: jax.random.uniform(key, shape, jnp.float32, lo, hi)


def _tuple_normal(shape=(B, H, W // 2, C)):
  def sample(key):
    k1, k2 = jax.random.split(key)
    return _normal(shape)(k1), _normal(shape)(k2)
  return sample


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  make: Callable[[], Any]
  sample: Callable[[Any], Any]  # key -> input value (array or tuple) with batch B.
  # Width of a [B, H, width, CONTEXT_FEATURES] context passed to the call (0: no context):
  # the width of x1 that the coupling's conditioner sees.
  context_width: int = 0
  rt_tol: float = 2e-6  # Round trip: |x' - x| <= rt_tol * (1 + |x|).

  def __str__(self):
    return self.name


CASES = [
    # Elementwise and data-initialised layers.
    Case('logit_preprocess', lambda: LogitPreprocess(NUM_LEVELS),
         _uniform(0.5, NUM_LEVELS - 0.5)),
    Case('sigmoid', Sigmoid, _normal(scale=2.0), rt_tol=5e-6),
    Case('inverse_sigmoid', lambda: Inverse(Sigmoid()), _uniform(0.02, 0.98)),
    Case('norm', Norm, _normal(scale=3.0, shift=1.0)),
    Case('norm_on_tuple', lambda: _inside(CheckerboardSplit(), Norm()),
         _normal(scale=3.0, shift=1.0)),
    Case('actnorm', lambda: ActNorm(init_scale=0.5), _normal(scale=3.0, shift=1.0)),
    Case('pointwise', lambda: Pointwise(noise_scale=0.5), _normal(shape=(B, H, W, 4))),
    Case('pointwise_on_tuple', lambda: _inside(ChannelSplit(), Pointwise(noise_scale=0.5)),
         _normal(shape=(B, H, W, 4))),
    # Splits, merges and reshuffles.
    Case('checkerboard_split', CheckerboardSplit, _normal()),
    Case('checkerboard_merge', lambda: Inverse(CheckerboardSplit()), _tuple_normal()),
    Case('checkerboard_flip', lambda: _inside(CheckerboardSplit(), TupleFlip()), _normal()),
    Case('checker2d_split', Checkerboard2DSplit, _normal()),
    Case('checker2d_flip', lambda: _inside(Checkerboard2DSplit(), TupleFlip()), _normal()),
    Case('channel_split', ChannelSplit, _normal()),
    Case('channel_flip', lambda: _inside(ChannelSplit(), TupleFlip()), _normal()),
    Case('tuple_flip', TupleFlip, _tuple_normal()),
    Case('space_to_depth', SpaceToDepth, _normal()),
    Case('depth_to_space', lambda: Inverse(SpaceToDepth()), _normal(shape=(B, 2, 2, 8))),
    # Couplings. Compiling a conditioner takes seconds, so there are few of them, and all see
    # x1 of the same shape [B, H, W/2, C] (eager op-by-op compilations are then shared).
    Case('mixlog_checkerboard_context', lambda: _inside(CheckerboardSplit(), _mixlog()),
         _normal(), context_width=W // 2, rt_tol=3e-6),
    Case('mixlog_channel', lambda: _inside(ChannelSplit(), _mixlog()),
         _normal(shape=(B, H, W // 2, 2 * C)), rt_tol=3e-6),
    # Compositions.
    Case('full_chain', lambda: Chain([
        LogitPreprocess(NUM_LEVELS), Norm(), Pointwise(noise_scale=0.3),
        _inside(Checkerboard2DSplit(), _affine(), TupleFlip(), ActNorm()),
        SpaceToDepth(), _inside(ChannelSplit(), TupleFlip(), ActNorm(init_scale=0.5)),
        Inverse(SpaceToDepth()), Sigmoid(),
    ]), _uniform(0.5, NUM_LEVELS - 0.5), rt_tol=2e-5),
    Case('inverse_chain', lambda: Inverse(Chain([
        _inside(Checkerboard2DSplit(), TupleFlip()), SpaceToDepth(), Sigmoid(),
    ])), _uniform(0.02, 0.98, shape=(B, 2, 2, 8))),
    Case('inverse_chain_with_norm', lambda: Inverse(Chain([
        Norm(), _inside(CheckerboardSplit(), TupleFlip(), ActNorm()), Sigmoid(),
    ])), _uniform(0.02, 0.98), rt_tol=5e-6),  # as 'sigmoid', whose inverse it runs first
]


# ----------------------------------------------------------------------------------------
# Helpers.


@dataclasses.dataclass
class Built:
  """A case with its module, initialised variables, input batch, context and jitted maps."""
  case: Case
  module: Any
  variables: Any
  x: Any
  context: Optional[jnp.ndarray]
  key: Any
  fwd: Callable = None  # jit of (variables, x, context) -> (y, log_det)
  inv: Callable = None

  def apply(self, variables, x, context, inverse=False):
    """Eager (un-jitted) apply."""
    return self.module.apply(variables, x, context, inverse=inverse)


def _amplify(variables, gain):
  """Multiplies every parameter of every 'proj_out' conv by ``gain``."""
  def scale(path, leaf):
    names = [getattr(p, 'key', None) for p in path]
    return leaf * gain if 'proj_out' in names else leaf
  return jax.tree_util.tree_map_with_path(scale, variables)


def _context(key, width):
  return jax.random.normal(key, (B, H, width, CONTEXT_FEATURES), jnp.float32)


@functools.lru_cache(maxsize=None)
def _build(case):
  """Initialises a case once per test session (compiling a conditioner takes seconds)."""
  key = jax.random.PRNGKey(zlib.crc32(case.name.encode()))
  k_init, k_x, k_ctx, k_rest = jax.random.split(key, 4)
  module = case.make()
  x = case.sample(k_x)
  context = _context(k_ctx, case.context_width) if case.context_width else None
  variables = _amplify(_jit_quick(module.init)(k_init, x, context), NET_GAIN)
  fwd = _jit_quick(lambda v, x, c: module.apply(v, x, c))
  inv = _jit_quick(lambda v, y, c: module.apply(v, y, c, inverse=True))
  return Built(case, module, variables, x, context, k_rest, fwd, inv)


def _case(name):
  return next(c for c in CASES if c.name == name)


@pytest.fixture(params=CASES, ids=str)
def built(request):
  return _build(request.param)


def _parts(value):
  return value if isinstance(value, tuple) else (value,)


def _flat(value):
  """Array or tuple of [B, ...] arrays -> [B, D] (tuple parts concatenated)."""
  return jnp.concatenate([p.reshape(p.shape[0], -1) for p in _parts(value)], axis=1)


def _unflat(flat, template):
  """Inverse of _flat: [B, D] -> the structure and shapes of ``template``."""
  out, start = [], 0
  for p in _parts(template):
    size = int(np.prod(p.shape[1:]))
    out.append(flat[:, start:start + size].reshape(p.shape))
    start += size
  assert start == flat.shape[1]
  return tuple(out) if isinstance(template, tuple) else out[0]


def _assert_same_structure(a, b):
  assert isinstance(a, tuple) == isinstance(b, tuple)
  chex.assert_trees_all_equal_shapes(a, b)


def _assert_round_trip(x, x_rec, tol):
  _assert_same_structure(x, x_rec)
  for p, q in zip(_parts(x), _parts(x_rec)):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    err = np.abs(p - q) / (1.0 + np.abs(p))
    assert err.max() <= tol, f'round-trip error {err.max():.3g} > {tol:.3g}'


def _f32_log_det_tol(x):
  """A float32 log-det is a sum of D per-element terms, each good to a few ulps of itself."""
  return EPS32 * sum(int(np.prod(p.shape[1:])) for p in _parts(x))


def _assert_log_det_close(actual, expected, tol):
  """|actual - expected| <= tol * (1 + |expected|), per example."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  err = np.abs(actual - expected) / (1 + np.abs(expected))
  assert err.max() <= tol, f'log-det error {err.max():.3g} > {tol:.3g}: {actual} vs {expected}'


def _assert_close_f32(actual, expected):
  """Two float32 evaluations of the same thing (e.g. jit vs eager): a few ulps apart."""
  chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# The harness: applied to every case.


def test_shapes_and_round_trip(built):
  y, log_det = built.fwd(built.variables, built.x, built.context)
  chex.assert_shape(log_det, (B,))
  chex.assert_tree_all_finite((y, log_det))
  assert sum(p.size for p in _parts(y)) == sum(p.size for p in _parts(built.x))
  x_rec, log_det_inv = built.inv(built.variables, y, built.context)
  chex.assert_shape(log_det_inv, (B,))
  chex.assert_tree_all_finite((x_rec, log_det_inv))
  _assert_round_trip(built.x, x_rec, built.case.rt_tol)


def test_eager_matches_jit_and_round_trips(built):
  y, log_det = built.apply(built.variables, built.x, built.context)
  _assert_close_f32((y, log_det), built.fwd(built.variables, built.x, built.context))
  x_rec, log_det_inv = built.apply(built.variables, y, built.context, inverse=True)
  _assert_close_f32((x_rec, log_det_inv), built.inv(built.variables, y, built.context))
  _assert_round_trip(built.x, x_rec, built.case.rt_tol)


def test_log_dets_of_the_two_directions_cancel(built):
  y, log_det = built.fwd(built.variables, built.x, built.context)
  _, log_det_inv = built.inv(built.variables, y, built.context)
  _assert_log_det_close(-log_det_inv, log_det, tol=_f32_log_det_tol(built.x))


def test_log_det_matches_float64_jacobian(built):
  """Forward at x and inverse at y = forward(x), in one compiled function (compiles dominate)."""
  with enable_x64(True):
    to64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
    variables, x, context = to64(built.variables), to64(built.x), to64(built.context)

    def jacobian(value, inverse):
      """d flat(out) / d flat(value), and (out, log_det), for the whole batch."""
      def flat_map(v):
        out, log_det = built.module.apply(variables, _unflat(v.reshape(B, -1), value),
                                          context, inverse=inverse)
        return _flat(out).reshape(-1), (out, log_det)
      return jax.jacrev(flat_map, has_aux=True)(_flat(value).reshape(-1))

    def jacobians(x):
      jac_fwd, (y, log_det_fwd) = jacobian(x, inverse=False)
      jac_inv, (_, log_det_inv) = jacobian(y, inverse=True)
      return (jac_fwd, log_det_fwd), (jac_inv, log_det_inv)

    results = _jit_quick(jacobians)(x)
    # No silent float32 step anywhere in the log-det.
    assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(results))
  dim = _flat(built.x).shape[1]
  for direction, (jac, log_det) in zip(('forward', 'inverse'), results):
    jac = np.asarray(jac, np.float64)
    assert jac.shape == (B * dim, B * dim)
    jac = jac.reshape(B, dim, B, dim)
    for b in range(B):
      for b2 in range(B):
        if b2 != b:  # Each example depends on itself only.
          assert np.all(jac[b, :, b2, :] == 0), (direction, b, b2)
    sign, expected = zip(*(np.linalg.slogdet(jac[b, :, b, :]) for b in range(B)))
    assert all(s != 0 for s in sign), f'{direction}: singular Jacobian'
    try:
      _assert_log_det_close(log_det, np.array(expected), tol=1e-9)
    except AssertionError as e:
      raise AssertionError(f'{direction}: {e}') from None


def test_vmap_over_batches(built):
  """vmap of forward, and of inverse applied to its result, against per-batch calls.

  The batches are the case's own batch, its examples swapped, and a convex mix of the two:
  inputs stay in the domain (and in the range the data-initialised layers were fitted to).
  """
  variants = (lambda a: a, lambda a: a[::-1], lambda a: 0.75 * a + 0.25 * a[::-1])
  tmap = jax.tree_util.tree_map
  xs = [tmap(f, built.x) for f in variants]
  width = built.case.context_width
  cs = [f(built.context) for f in variants] if width else [None] * len(variants)
  stack = lambda items: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *items)

  def both(variables, x, context):
    y = built.module.apply(variables, x, context)
    return y, built.module.apply(variables, y[0], context, inverse=True)

  got = _jit_quick(jax.vmap(both, in_axes=(None, 0, 0 if width else None)))(
      built.variables, stack(xs), stack(cs) if width else None)
  expected = []
  for x, c in zip(xs, cs):
    y = built.fwd(built.variables, x, c)
    expected.append((y, built.inv(built.variables, y[0], c)))
  chex.assert_tree_all_finite(got)
  _assert_close_f32(got, stack(expected))
  _assert_round_trip(stack(xs), got[1][0], built.case.rt_tol)


# ----------------------------------------------------------------------------------------
# Conditional couplings use their context.


@pytest.mark.parametrize('case', [c for c in CASES if c.context_width], ids=str)
def test_context_changes_the_output(case):
  built = _build(case)
  c2 = _context(built.key, built.case.context_width)
  y1, ld1 = built.fwd(built.variables, built.x, built.context)
  y2, ld2 = built.fwd(built.variables, built.x, c2)
  assert float(jnp.max(jnp.abs(_flat(y1) - _flat(y2)))) > 1e-2
  assert float(jnp.max(jnp.abs(ld1 - ld2))) > 1e-2
  # The first half (x1, which conditions) passes through untouched whatever the context:
  # exactly half of the outputs are bit-identical to the inputs, under either context.
  for y in (y1, y2):
    same = np.asarray(_flat(y) == _flat(built.x))
    assert np.all(same.sum(axis=1) == same.shape[1] // 2)
  # And the inverse needs the context the forward used.
  x_rec, _ = built.inv(built.variables, y2, c2)
  _assert_round_trip(built.x, x_rec, built.case.rt_tol)


# ----------------------------------------------------------------------------------------
# Layouts of the volume-preserving reshuffles.


def _index_image(shape=(B, H, W, C)):
  """x[b, r, c, k] encodes its own position, so every element can be traced."""
  return jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)


@pytest.mark.parametrize('bij', [CheckerboardSplit(), Checkerboard2DSplit(), ChannelSplit(),
                                 SpaceToDepth(), Inverse(SpaceToDepth())],
                         ids=['checkerboard', 'checker2d', 'channel', 's2d', 'd2s'])
def test_reshuffles_round_trip_bit_exactly(bij):
  x = _normal(shape=(B, 4, 8, 4))(jax.random.PRNGKey(2))
  y, log_det = bij.apply({}, x)
  x_rec, log_det_inv = bij.apply({}, y, inverse=True)
  for a, b in ((x, x_rec), (y, bij.apply({}, x_rec)[0])):
    _assert_same_structure(a, b)
    for p, q in zip(_parts(a), _parts(b)):
      np.testing.assert_array_equal(np.asarray(p), np.asarray(q))
  np.testing.assert_array_equal(np.asarray(log_det), np.zeros(B))
  np.testing.assert_array_equal(np.asarray(log_det_inv), np.zeros(B))
  # A permutation: the multiset of values is unchanged.
  np.testing.assert_array_equal(np.sort(np.asarray(_flat(y)), axis=1),
                                np.sort(np.asarray(_flat(x)), axis=1))


def test_checkerboard_split_layout():
  x = _index_image((B, 4, 6, 3))
  (x1, x2), _ = CheckerboardSplit().apply({}, x)
  np.testing.assert_array_equal(np.asarray(x1), np.asarray(x)[:, :, 0::2])
  np.testing.assert_array_equal(np.asarray(x2), np.asarray(x)[:, :, 1::2])


def test_checkerboard_2d_split_layout():
  shape = (B, 4, 6, 3)
  x = np.asarray(_index_image(shape))
  (x1, x2), _ = Checkerboard2DSplit().apply({}, jnp.asarray(x))
  x1, x2 = np.asarray(x1), np.asarray(x2)
  chex.assert_shape((x1, x2), (B, 4, 3, 3))
  for r in range(shape[1]):
    np.testing.assert_array_equal(x1[:, r], x[:, r, (r % 2)::2])
    np.testing.assert_array_equal(x2[:, r], x[:, r, (1 - r % 2)::2])
  # Decode positions: every element of x1 sits at row + col even, every one of x2 at odd.
  _, rows, cols, _ = np.unravel_index(x1.astype(np.int64), shape)
  assert np.all((rows + cols) % 2 == 0)
  _, rows, cols, _ = np.unravel_index(x2.astype(np.int64), shape)
  assert np.all((rows + cols) % 2 == 1)


def test_channel_split_layout():
  x = _index_image((B, 2, 2, 6))
  (x1, x2), _ = ChannelSplit().apply({}, x)
  np.testing.assert_array_equal(np.asarray(x1), np.asarray(x)[..., :3])
  np.testing.assert_array_equal(np.asarray(x2), np.asarray(x)[..., 3:])


def test_tuple_flip_swaps():
  a, b = _tuple_normal()(jax.random.PRNGKey(3))
  (y1, y2), log_det = TupleFlip().apply({}, (a, b))
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(y2), np.asarray(a))
  np.testing.assert_array_equal(np.asarray(log_det), np.zeros(B))
  (z1, z2), _ = TupleFlip().apply({}, (a, b), inverse=True)
  np.testing.assert_array_equal(np.asarray(z1), np.asarray(b))


def _space_to_depth_reference(x, k=2):
  """TensorFlow's space_to_depth, written as loops: out[b, i, j, (dy*k + dx)*C + c]."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // k, w // k, k * k * c), x.dtype)
  for i in range(h // k):
    for j in range(w // k):
      for dy in range(k):
        for dx in range(k):
          for ch in range(c):
            out[:, i, j, (dy * k + dx) * c + ch] = x[:, k * i + dy, k * j + dx, ch]
  return out


def test_space_to_depth_matches_tf_order():
  x = np.asarray(_index_image((B, 4, 6, 3)))
  y, _ = SpaceToDepth().apply({}, jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(y), _space_to_depth_reference(x))
  back, _ = SpaceToDepth().apply({}, jnp.asarray(_space_to_depth_reference(x)), inverse=True)
  np.testing.assert_array_equal(np.asarray(back), x)


# ----------------------------------------------------------------------------------------
# Pointwise against numpy.


@pytest.mark.parametrize('name', ['pointwise', 'pointwise_on_tuple'])
def test_pointwise_log_det_matches_numpy_slogdet(name):
  built = _build(_case(name))
  params = built.variables['params']
  weights = [params['W0']] if name == 'pointwise' else [params['layers_1'][f'W{i}']
                                                         for i in range(2)]
  y, log_det = built.fwd(built.variables, built.x, built.context)
  x_parts = np.split(np.asarray(built.x, np.float64), len(weights), axis=-1)
  expected, y_expected = 0.0, []
  for w, x_part in zip(weights, x_parts):
    w = np.asarray(w, np.float64)
    sign, logabs = np.linalg.slogdet(w)
    assert sign != 0 and abs(logabs) > 0.1  # A matrix far from volume preserving.
    expected += x_part.shape[1] * x_part.shape[2] * logabs
    y_expected.append(np.einsum('bhwc,cd->bhwd', x_part, w))
  np.testing.assert_allclose(np.asarray(y), np.concatenate(y_expected, axis=-1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(log_det), np.full(B, expected), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# MixLogisticCoupling robustness in float32.


def test_mixlogistic_coupling_float32_extreme_inputs_are_finite():
  # The checkerboard coupling case, its compiled maps reused, with x2 (the odd columns) spread
  # log-uniformly over [1e-2, 1e4] in magnitude, both signs, and its conditioner amplified.
  built = _build(_case('mixlog_checkerboard_context'))
  k1, k2 = jax.random.split(built.key)
  shape = (B, H, W // 2, C)
  magnitude = 10.0 ** jax.random.uniform(k1, shape, jnp.float32, -2.0, 4.0)
  x2 = jnp.where(jax.random.bernoulli(k2, 0.5, shape), magnitude, -magnitude)
  x2 = x2.at[0, 0, 0, 0].set(1e4).at[0, 0, 0, 1].set(-1e4)
  x = built.x.at[:, :, 1::2].set(x2)
  variables = _amplify(built.variables, 6.0)
  context = built.context

  # The amplified net drives some mixture log-scales below the -7 clamp and others large.
  net_params = variables['params']['layers_1']['net']
  h = _net().apply({'params': net_params}, built.x[:, :, 0::2], context,
                   num_outputs=2 + 3 * COMPONENTS)
  raw_log_scales = h[..., 2 + 2 * COMPONENTS:]
  assert float(jnp.min(raw_log_scales)) < -7.0 and float(jnp.max(raw_log_scales)) > 3.0

  y, log_det = built.fwd(variables, x, context)
  chex.assert_tree_all_finite((y, log_det))
  assert y.dtype == log_det.dtype == jnp.float32
  x_rec, log_det_inv = built.inv(variables, y, context)
  chex.assert_tree_all_finite((x_rec, log_det_inv))
  # Far in the tails logit F can be nearly flat in x2, so x2 itself need not come back to
  # float32 precision; the inverse must still be backward stable: forward(inverse(y)) == y to
  # float32 rounding. Where the map is well conditioned (the +-1e4 points here) x2 comes back.
  y_again, _ = built.fwd(variables, x_rec, context)
  err = np.abs(np.asarray(y_again) - np.asarray(y)) / (1 + np.abs(np.asarray(y)))
  assert err.max() < 1e-5, err.max()
  np.testing.assert_allclose(np.asarray(x_rec)[0, 0, 1], np.asarray(x)[0, 0, 1], rtol=1e-5)

  grads = _jit_quick(jax.grad(lambda v: jnp.sum(built.module.apply(v, x, context)[1])))(
      variables)
  chex.assert_tree_all_finite(grads)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(grads))
