"""Tests for flowpp_jax.logistic: the mixture-of-logistics density, CDF and inverse CDF.

What these tests establish:
  * logpdf / logcdf / logsf agree with an independent float64 scipy.stats.logistic mixture,
    for moderate parameters (compared as probabilities) and for extreme-but-valid ones
    (log-scales in [-7, 5], logits +-30, means +-50, |x| up to 1e4; compared in log space,
    where the float32 error is at most 8 eps * (1 + |log p|), i.e. a few ulps of the value).
  * logit_cdf = log F - log(1 - F) stays finite and accurate where F itself rounds to 1.
  * The bisection inverse is accurate: invcdf(cdf(x)) and invlogit_cdf(logit_cdf(x)) return x
    to within a few ulps plus the conditioning term (rounding of the forward value divided by
    its slope), in float32 and in float64 (~1e-12 relative), including logit-space tails where
    1 - F < 1e-30; its result is the smallest float whose logit CDF reaches the target (up to
    the forward function's own rounding); and it is monotone in y.
  * The custom_jvp of invlogit_cdf matches central finite differences in float64 w.r.t. the
    target and every parameter, in forward and reverse mode, and dx/dtarget = 1 / (d logit F/dx).
  * Values and gradients are finite at |x| up to 1e4 with log-scales at the -7 clamp, logits and
    means at +-1e3; invcdf is finite for y down to 1e-30 and up to 1 - 1e-7.
  * jit and vmap give the same results as eager, batched calls.
  * The density integrates to 1 and its running integral is the CDF.

Compilation dominates the runtime, so the tests share a few array shapes and go through
module-level jitted wrappers.
"""
import numpy as np
import pytest
import chex
import jax
import jax.numpy as jnp
from scipy import integrate, special, stats

from flowpp_jax.logistic import (
    mixlogistic_invcdf,
    NEWTON_TOLERANCE,
    mixlogistic_invlogit_cdf,
    mixlogistic_invlogit_cdf_newton,
    mixlogistic_logcdf,
    mixlogistic_logit_cdf,
    mixlogistic_logpdf,
    mixlogistic_logsf,
)

try:  # Older jax versions.
  from jax.experimental import enable_x64 as _enable_x64
except ImportError:  # Newer jax: the context manager lives at the top level.
  _enable_x64 = jax.enable_x64

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
N, K = 2048, 4  # Shared batch shape for most tests, so that each jitted function compiles once.

_FORWARD_FNS = (mixlogistic_logpdf, mixlogistic_logcdf, mixlogistic_logsf, mixlogistic_logit_cdf)


@jax.jit
def _forward(x, logits, means, log_scales):
  """(log f, log F, log(1 - F), logit F)."""
  return tuple(fn(x, logits, means, log_scales) for fn in _FORWARD_FNS)


# The bisection loop in invlogit_cdf closes over its arguments, so every eager call retraces
# and recompiles it (about a second each); the tests go through these once-jitted wrappers.
_invlogit = jax.jit(mixlogistic_invlogit_cdf)
_invcdf = jax.jit(mixlogistic_invcdf)


def _sum_grad(fn):
  """Gradient of sum(fn) w.r.t. all four arguments. Elements of S are independent, so this
  holds every per-element derivative."""
  return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2, 3)))


_grad_invlogit = _sum_grad(mixlogistic_invlogit_cdf)
_jvp_invlogit = jax.jit(lambda args, tangents: jax.jvp(mixlogistic_invlogit_cdf, args, tangents))


# ----------------------------------------------------------------------------------------
# Helpers.


@pytest.fixture
def x64():
  """Runs a test with float64 enabled; restores the previous setting afterwards."""
  with _enable_x64(True):
    yield


def _f32(*arrays):
  return tuple(np.asarray(a, np.float32) for a in arrays)


def _ref_logs(x, logits, means, log_scales):
  """Independent float64 reference: (log f, log F, log(1 - F)) via scipy.stats.logistic."""
  x = np.asarray(x, np.float64)[..., None]
  logits, means = np.asarray(logits, np.float64), np.asarray(means, np.float64)
  scales = np.exp(np.asarray(log_scales, np.float64))
  log_w = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  dist = stats.logistic
  return (special.logsumexp(log_w + dist.logpdf(x, loc=means, scale=scales), axis=-1),
          special.logsumexp(log_w + dist.logcdf(x, loc=means, scale=scales), axis=-1),
          special.logsumexp(log_w + dist.logsf(x, loc=means, scale=scales), axis=-1))


def _ref_probs(x, logits, means, log_scales):
  """Independent float64 reference in probability space: (f, F, 1 - F) as weighted sums."""
  x = np.asarray(x, np.float64)[..., None]
  logits, means = np.asarray(logits, np.float64), np.asarray(means, np.float64)
  scales = np.exp(np.asarray(log_scales, np.float64))
  w = special.softmax(logits, axis=-1)
  dist = stats.logistic
  return (np.sum(w * dist.pdf(x, loc=means, scale=scales), axis=-1),
          np.sum(w * dist.cdf(x, loc=means, scale=scales), axis=-1),
          np.sum(w * dist.sf(x, loc=means, scale=scales), axis=-1))


def _moderate_params(rng, shape=(N,), k=K):
  return (rng.normal(0.0, 1.0, shape + (k,)), rng.normal(0.0, 2.0, shape + (k,)),
          rng.uniform(-2.0, 1.0, shape + (k,)))


def _extreme_params(rng, shape=(N,), k=K):
  log_scales = rng.uniform(-7.0, 5.0, shape + (k,))
  # Make sure both ends of the allowed log-scale range are present.
  log_scales.reshape(-1, k)[::7, 0] = -7.0
  log_scales.reshape(-1, k)[3::7, -1] = 5.0
  return rng.uniform(-30.0, 30.0, shape + (k,)), rng.uniform(-50.0, 50.0, shape + (k,)), log_scales


def _extreme_x(rng, n=N):
  x = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-2.0, 4.0, n)
  x[:4] = [-1e4, 1e4, 0.0, 1e3]
  return x


def _assert_log_close(actual, ref, eps, c=8.0, err_msg=''):
  """|actual - ref| <= c * eps * (1 + |ref|): a few ulps of the value (plus eps near 0)."""
  actual, ref = np.asarray(actual, np.float64), np.asarray(ref, np.float64)
  chex.assert_tree_all_finite(actual)
  err = np.abs(actual - ref)
  bound = c * eps * (1.0 + np.abs(ref))
  worst = np.argmax(err / bound)
  assert np.all(err <= bound), (
      f'{err_msg}: worst error {err.flat[worst]:.3g} > bound {bound.flat[worst]:.3g} '
      f'(ref {ref.flat[worst]:.6g}, got {actual.flat[worst]:.6g})')


def _logit_roundtrip_bound(x, ref, eps, ulps=2.0, c=4.0):
  """ulps of x, plus the logit-space rounding eps * (1 + |log F| + |log(1-F)|) over the slope
  d logit F / dx = f / (F (1 - F))."""
  ref_lpdf, ref_lcdf, ref_lsf = ref
  inv_slope = np.exp(ref_lcdf + ref_lsf - ref_lpdf)
  return (ulps * eps * np.maximum(np.abs(x), 1.0)
          + c * eps * (1.0 + np.abs(ref_lcdf) + np.abs(ref_lsf)) * inv_slope)


# ----------------------------------------------------------------------------------------
# 1. Forward functions against scipy.


def test_moderate_params_match_scipy_probabilities():
  rng = np.random.default_rng(0)
  x, logits, means, log_scales = _f32(rng.normal(0.0, 3.0, N), *_moderate_params(rng))
  pdf, cdf, sf = _ref_probs(x, logits, means, log_scales)
  out = _forward(x, logits, means, log_scales)
  for o in out:
    chex.assert_shape(o, (N,))
    chex.assert_type(o, jnp.float32)
  lpdf, lcdf, lsf = (np.asarray(o, np.float64) for o in out[:3])
  # Probabilities: a few float32 ulps relative (values here are far from underflow).
  assert min(pdf.min(), cdf.min(), sf.min()) > 1e-12
  np.testing.assert_allclose(np.exp(lpdf), pdf, rtol=3e-6, atol=0)
  np.testing.assert_allclose(np.exp(lcdf), cdf, rtol=3e-6, atol=0)
  np.testing.assert_allclose(np.exp(lsf), sf, rtol=3e-6, atol=0)
  # And the logs directly.
  for o, r, name in zip(out, _ref_logs(x, logits, means, log_scales), ('pdf', 'cdf', 'sf')):
    _assert_log_close(o, r, EPS32, err_msg=f'log{name}')
  # F + (1 - F) = 1, from two independently computed logs.
  np.testing.assert_allclose(np.exp(np.logaddexp(lcdf, lsf)), 1.0, atol=4 * EPS32)
  # Batch shapes other than 1-D: S = (2, 3).
  small = _f32(x[:6].reshape(2, 3), *(p[:6].reshape(2, 3, K) for p in (logits, means, log_scales)))
  for got, o in zip(_forward(*small), out):
    chex.assert_shape(got, (2, 3))
    chex.assert_trees_all_close(got, o[:6].reshape(2, 3), rtol=4 * EPS32, atol=4 * EPS32)


def test_extreme_params_match_scipy_in_log_space():
  rng = np.random.default_rng(1)
  x, logits, means, log_scales = _f32(_extreme_x(rng), *_extreme_params(rng))
  ref = _ref_logs(x, logits, means, log_scales)
  # The test must reach the regime where probabilities underflow in float64 itself.
  assert np.min(ref[1]) < -1e4 and np.min(ref[2]) < -1e4 and np.min(ref[0]) < -1e4
  out = _forward(x, logits, means, log_scales)
  for fn, o, r in zip(_FORWARD_FNS, out, ref):
    _assert_log_close(o, r, EPS32, err_msg=fn.__name__)


def test_single_component_matches_closed_form():
  # K = 1 at hand-picked points, including where log F is about -1e7.
  x = np.array([-1e4, -3.0, 0.0, 0.5, 3.0, 1e4], np.float32)
  means = np.full((6, 1), 0.25, np.float32)
  log_scales = np.full((6, 1), -7.0, np.float32)
  logits = np.zeros((6, 1), np.float32)
  ref = _ref_logs(x, logits, means, log_scales)
  z = (x.astype(np.float64) - 0.25) * np.exp(7.0)
  np.testing.assert_allclose(ref[1], -np.logaddexp(0.0, -z), rtol=1e-12)  # The reference itself.
  np.testing.assert_allclose(ref[2], -np.logaddexp(0.0, z), rtol=1e-12)
  out = _forward(x, logits, means, log_scales)
  for fn, o, r in zip(_FORWARD_FNS, out, ref):
    _assert_log_close(o, r, EPS32, err_msg=fn.__name__)


# ----------------------------------------------------------------------------------------
# 2. logit F where F rounds to 1 (or 0) in float32.


def test_logit_cdf_where_cdf_rounds_to_one():
  x = np.array([100.0, -100.0], np.float32)
  logits, means, log_scales = (np.zeros((2, 1), np.float32),) * 3
  _, lcdf, _, logit = _forward(x, logits, means, log_scales)
  # F(100) = 1 - 3.7e-44 is exactly 1 in float32, so a logit formed from F would be inf ...
  assert float(jnp.exp(lcdf)[0]) == 1.0
  assert np.isinf(special.logit(np.float32(1.0)))
  # ... but the difference of logs is exact: logit F(x) = x for the standard logistic.
  chex.assert_tree_all_finite(logit)
  np.testing.assert_allclose(np.asarray(logit), [100.0, -100.0], rtol=2 * EPS32)


def test_logit_cdf_matches_reference_mixtures():
  rng = np.random.default_rng(2)
  half = N // 2
  x = np.concatenate([_extreme_x(rng, half),
                      rng.choice([-1.0, 1.0], half) * rng.uniform(20.0, 200.0, half)])
  logits, means, log_scales = _moderate_params(rng)
  log_scales[:half] = rng.uniform(-7.0, 5.0, (half, K))
  x, logits, means, log_scales = _f32(x, logits, means, log_scales)
  _, ref_lcdf, ref_lsf = _ref_logs(x, logits, means, log_scales)
  ref = ref_lcdf - ref_lsf
  # Many points where F is 1 (or 0) in float32.
  assert np.sum(ref > 90.0) > 100 and np.sum(ref < -90.0) > 100
  out = np.asarray(_forward(x, logits, means, log_scales)[3], np.float64)
  chex.assert_tree_all_finite(out)
  # Each log carries ~eps relative error; their difference inherits the sum of magnitudes.
  bound = 8 * EPS32 * (1.0 + np.abs(ref_lcdf) + np.abs(ref_lsf))
  assert np.all(np.abs(out - ref) <= bound), np.max(np.abs(out - ref) / bound)


# ----------------------------------------------------------------------------------------
# 3. Inverse CDF accuracy.


def _roundtrip_case(seed):
  rng = np.random.default_rng(seed)
  return (rng.normal(0.0, 4.0, N),) + _moderate_params(rng)


def test_invcdf_roundtrip_float32():
  x, logits, means, log_scales = _f32(*_roundtrip_case(3))
  ref_lpdf, ref_lcdf, ref_lsf = _ref_logs(x, logits, means, log_scales)
  y = jnp.exp(_forward(x, logits, means, log_scales)[1])
  x_back = np.asarray(_invcdf(y, logits, means, log_scales), np.float64)
  # Only points where y = F(x) is representable away from 1 (float32 spacing near 1 is 6e-8).
  keep = (ref_lcdf > np.log(1e-3)) & (ref_lsf > np.log(1e-3))
  assert keep.sum() > N // 2
  chex.assert_tree_all_finite(x_back[keep])
  # y = exp(log F) carries relative error ~eps * (1 + |log F|); that moves the root by
  # dy / f = eps * (1 + |log F|) * F / f (the conditioning term). Bisection adds an ulp of x.
  cond = np.exp(ref_lcdf - ref_lpdf) * (1.0 + np.abs(ref_lcdf))
  bound = 4 * EPS32 * np.maximum(np.abs(x), 1.0) + 4 * EPS32 * cond
  err = np.abs(x_back - x)
  assert np.all(err[keep] <= bound[keep]), np.max(err[keep] / bound[keep])


def test_invlogit_roundtrip_float32_including_tails():
  x, logits, means, log_scales = _roundtrip_case(4)
  half = N // 2
  # Half of the points far in the tails: 1 - F (or F) below 1e-30.
  x[:half] = np.random.default_rng(5).uniform(70.0, 150.0, half) * np.where(
      np.arange(half) % 2, 1.0, -1.0)
  log_scales[:half] = np.clip(log_scales[:half], -2.0, 0.0)
  means[:half] = np.clip(means[:half], -5.0, 5.0)
  x, logits, means, log_scales = _f32(x, logits, means, log_scales)
  ref = _ref_logs(x, logits, means, log_scales)
  assert np.sum(ref[2] < np.log(1e-30)) > N // 8 and np.sum(ref[1] < np.log(1e-30)) > N // 8
  target = _forward(x, logits, means, log_scales)[3]
  x_back = np.asarray(_invlogit(target, logits, means, log_scales), np.float64)
  chex.assert_tree_all_finite(x_back)
  err = np.abs(x_back - x)
  bound = _logit_roundtrip_bound(x, ref, EPS32)
  assert np.all(err <= bound), np.max(err / bound)
  # In the tails specifically, the root is recovered to a couple of ulps of x.
  assert np.all(err[:half] <= 2 * EPS32 * np.abs(x[:half])), np.max(err[:half] / x[:half])


def test_inverse_roundtrips_float64(x64):
  x, logits, means, log_scales = _roundtrip_case(6)
  x[:300] = np.linspace(-120.0, 120.0, 300)  # Out to 1 - F ~ 1e-50.
  ref = _ref_logs(x, logits, means, log_scales)
  ref_lpdf, ref_lcdf, ref_lsf = ref
  assert np.sum(ref_lsf < np.log(1e-30)) > 20 and np.sum(ref_lcdf < np.log(1e-30)) > 20
  _, lcdf, _, target = _forward(x, logits, means, log_scales)
  chex.assert_type(target, jnp.float64)
  # Probability space, where 1 - y is representable (here down to 1e-6).
  x_back = np.asarray(_invcdf(jnp.exp(lcdf), logits, means, log_scales))
  assert x_back.dtype == np.float64
  keep = (ref_lcdf > np.log(1e-6)) & (ref_lsf > np.log(1e-6))
  assert keep.sum() > N // 2
  cond = np.exp(ref_lcdf - ref_lpdf) * (1.0 + np.abs(ref_lcdf))
  err = np.abs(x_back - x)
  np.testing.assert_array_less(
      err[keep], (1e-12 * np.maximum(np.abs(x), 1.0) + 8 * EPS64 * cond)[keep])
  # Logit space, everywhere including the tails.
  x_back = np.asarray(_invlogit(target, logits, means, log_scales))
  err = np.abs(x_back - x)
  np.testing.assert_array_less(err, _logit_roundtrip_bound(x, ref, EPS64))
  np.testing.assert_array_less(err[:300], 1e-12 * np.maximum(np.abs(x[:300]), 1.0))


@pytest.mark.parametrize('extreme', [False, True])
def test_invlogit_returns_smallest_float_reaching_target(extreme):
  """The bisection ends on two adjacent floats lo < hi with logit F(lo) < t <= logit F(hi)."""
  rng = np.random.default_rng(8 + extreme)
  if extreme:
    params, target = _extreme_params(rng), rng.normal(0.0, 40.0, N)
  else:
    params, target = _moderate_params(rng), rng.normal(0.0, 3.0, N)
  target, logits, means, log_scales = _f32(target, *params)
  x = np.asarray(_invlogit(target, logits, means, log_scales))
  x_prev = np.nextafter(x, np.float32(-np.inf))
  at_x = np.asarray(_forward(x, logits, means, log_scales)[3], np.float64)
  at_prev = np.asarray(_forward(x_prev, logits, means, log_scales)[3], np.float64)
  # Slack: only the forward function's own rounding, which may differ between the compiled
  # loop body and this separate evaluation (|log F| + |log(1-F)| <= |t| + 2 log 2).
  slack = 4 * EPS32 * (2.0 + np.abs(target))
  assert np.all(at_x >= target - slack), np.min(at_x - target)
  assert np.all(at_prev < target + slack), np.max(at_prev - target)
  # In practice exactly, with no slack at all, nearly everywhere.
  assert np.mean((at_x >= target) & (at_prev < target)) > 0.95


@pytest.mark.parametrize('extreme', [False, True])
def test_newton_inverse_agrees_with_the_bisection(extreme):
  """The compression coder's solve: within its tolerance of the bisection's root (plus the
  root's own float32 uncertainty where logit F is flat), out to the tails and the clamp."""
  rng = np.random.default_rng(20 + extreme)
  if extreme:
    params, target = _extreme_params(rng), rng.normal(0.0, 40.0, N)
  else:
    params, target = _moderate_params(rng), rng.normal(0.0, 3.0, N)
  target[:3] = [0.0, 60.0, -60.0]
  target, logits, means, log_scales = _f32(target, *params)
  x_bisect = np.asarray(_invlogit(target, logits, means, log_scales), np.float64)
  x_newton = np.asarray(mixlogistic_invlogit_cdf_newton(target, logits, means, log_scales),
                        np.float64)
  chex.assert_tree_all_finite(x_newton)
  ref = _ref_logs(x_bisect, logits, means, log_scales)
  bound = (2 * NEWTON_TOLERANCE * (1.0 + np.abs(x_bisect))
           + 2 * _logit_roundtrip_bound(x_bisect, ref, EPS32))
  err = np.abs(x_newton - x_bisect)
  assert np.all(err <= bound), np.max(err / bound)
  # Same inputs, same bits: the coder's encoder and decoder rely on it.
  again = mixlogistic_invlogit_cdf_newton(target, logits, means, log_scales)
  np.testing.assert_array_equal(np.asarray(again), x_newton.astype(np.float32))


# ----------------------------------------------------------------------------------------
# 4. Monotonicity.


def test_invcdf_monotone_in_y():
  ys = np.sort(np.concatenate([
      np.geomspace(1e-30, 1e-3, 300), np.linspace(1e-3, 1.0 - 1e-3, N - 800),
      1.0 - np.geomspace(1e-3, 1e-7, 100),
      0.5 + np.arange(-200, 200) * EPS32 / 2,  # Adjacent floats around 0.5.
  ]).astype(np.float32))
  assert ys.shape == (N,) and ys[0] > 0 and ys[-1] < 1
  rng = np.random.default_rng(10)
  for params in (_moderate_params(rng, (4,)), _extreme_params(rng, (8,))):
    for logits, means, log_scales in zip(*params):
      batch = lambda p: np.broadcast_to(np.float32(p), (N, K))
      x = np.asarray(_invcdf(ys, batch(logits), batch(means), batch(log_scales)))
      chex.assert_tree_all_finite(x)
      assert np.all(np.diff(x) >= 0), np.min(np.diff(x))
      assert x[-1] > x[0]


# ----------------------------------------------------------------------------------------
# 5. Gradients of the inverse (custom_jvp).


def _fd_case(seed, n=6, k=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(0.0, 2.0, n),) + _moderate_params(rng, (n,), k)


@jax.jit
def _grad_bundle(target, logits, means, log_scales):
  """Gradients of invlogit_cdf w.r.t. all arguments, d logit F / dx at its result, and the
  gradient of logit F(x(t, theta), theta), which is identically t: 1 w.r.t. t, 0 w.r.t. theta."""
  x = mixlogistic_invlogit_cdf(target, logits, means, log_scales)
  grads = jax.grad(lambda *a: jnp.sum(mixlogistic_invlogit_cdf(*a)), argnums=(0, 1, 2, 3))(
      target, logits, means, log_scales)
  dl_dx = jax.grad(lambda x: jnp.sum(mixlogistic_logit_cdf(x, logits, means, log_scales)))(x)
  composed = lambda *a: jnp.sum(mixlogistic_logit_cdf(mixlogistic_invlogit_cdf(*a), *a[1:]))
  g = jax.grad(composed, argnums=(0, 1, 2, 3))(target, logits, means, log_scales)
  return grads, dl_dx, g


def test_invlogit_grad_matches_central_differences(x64):
  args = tuple(jnp.asarray(a) for a in _fd_case(11))
  grads = _grad_bundle(*args)[0]
  h = 1e-6
  for i, arg in enumerate(args):
    fd = np.zeros(arg.shape)
    for j in range(arg.shape[-1] if arg.ndim == 2 else 1):
      e = np.zeros(arg.shape)
      if arg.ndim == 2:
        e[:, j] = h
      else:
        e[:] = h
      plus = [a + e if m == i else a for m, a in enumerate(args)]
      minus = [a - e if m == i else a for m, a in enumerate(args)]
      d = (np.asarray(_invlogit(*plus)) - np.asarray(_invlogit(*minus))) / (2 * h)
      if arg.ndim == 2:
        fd[:, j] = d
      else:
        fd[:] = d
    assert np.any(np.abs(fd) > 1e-2)  # Non-trivial derivatives.
    np.testing.assert_allclose(np.asarray(grads[i]), fd, rtol=1e-6, atol=1e-8,
                               err_msg=f'argument {i}')
  # Forward mode (the jvp rule itself) along a random direction in all four arguments at once,
  # against central differences and against the reverse-mode gradients above.
  rng = np.random.default_rng(111)
  tangents = tuple(jnp.asarray(rng.normal(size=a.shape)) for a in args)
  _, jvp = _jvp_invlogit(args, tangents)
  fd = (np.asarray(_invlogit(*(a + h * t for a, t in zip(args, tangents))))
        - np.asarray(_invlogit(*(a - h * t for a, t in zip(args, tangents))))) / (2 * h)
  np.testing.assert_allclose(np.asarray(jvp), fd, rtol=1e-6, atol=1e-8)
  from_grads = sum(np.sum(np.asarray(g) * np.asarray(t), axis=-1) if g.ndim == 2
                   else np.asarray(g) * np.asarray(t) for g, t in zip(grads, tangents))
  np.testing.assert_allclose(np.asarray(jvp), from_grads, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_invlogit_dx_dtarget_is_reciprocal_slope(dtype):
  tol = {'float32': 2e-5, 'float64': 1e-12}[dtype]
  with _enable_x64(dtype == 'float64'):
    args = tuple(jnp.asarray(a, dtype) for a in _fd_case(12))
    grads, dl_dx, g = _grad_bundle(*args)
    dx_dt = grads[0]
    chex.assert_type(dx_dt, dtype)
    np.testing.assert_allclose(np.asarray(dx_dt * dl_dx), 1.0, rtol=tol)
    np.testing.assert_allclose(np.asarray(g[0]), 1.0, rtol=tol)
    for gp in g[1:]:
      np.testing.assert_allclose(np.asarray(gp), 0.0, atol=10 * tol)


def test_invcdf_grad_is_reciprocal_density(x64):
  _, logits, means, log_scales = _fd_case(13)
  y = jnp.asarray(np.random.default_rng(13).uniform(0.01, 0.99, 6))
  x, dx_dy = jax.jit(jax.vmap(jax.value_and_grad(mixlogistic_invcdf)))(y, logits, means,
                                                                      log_scales)
  ref_lpdf = _ref_logs(np.asarray(x), logits, means, log_scales)[0]
  np.testing.assert_allclose(np.asarray(dx_dy), np.exp(-ref_lpdf), rtol=1e-10)


# ----------------------------------------------------------------------------------------
# 6. No inf / NaN at the extremes.


def _extreme_grid():
  xs = np.array([-1e4, -1e3, 0.0, 1e3, 1e4])
  combos = []
  for ls in (-7.0, 0.0, 5.0):
    for lg in ((1e3, -1e3, 0.0), (-1e3, 1e3, 0.0), (0.0, 0.0, 0.0)):
      for mu in ((1e3, -1e3, 0.0), (-1e3, 1e3, 1e3), (1e3, 1e3, 1e3)):
        combos.append((lg, mu, (ls, -7.0, ls)))
  logits, means, log_scales = (np.array([c[i] for c in combos]) for i in range(3))
  tile = lambda p: np.tile(p, (len(xs), 1))
  return _f32(np.repeat(xs, len(combos)), tile(logits), tile(means), tile(log_scales))


@jax.jit
def _forward_values_and_grads(x, logits, means, log_scales):
  return tuple(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=(0, 1, 2, 3))(
      x, logits, means, log_scales) for fn in _FORWARD_FNS)


def test_values_and_grads_finite_at_extremes():
  args = _extreme_grid()
  values = _forward(*args)
  ref = _ref_logs(*args)
  ref = ref + (ref[1] - ref[2],)
  for fn, v, r, (total, grads) in zip(_FORWARD_FNS, values, ref, _forward_values_and_grads(*args)):
    chex.assert_tree_all_finite((v, total, grads))
    # Values stay accurate too, not just finite.
    if fn is mixlogistic_logit_cdf:
      np.testing.assert_allclose(np.asarray(v), r, rtol=16 * EPS32, atol=16 * EPS32)
    else:
      _assert_log_close(v, r, EPS32, c=16.0, err_msg=fn.__name__)
    # d log F / dx = f / F >= 0 and d log(1 - F) / dx = -f / (1 - F) <= 0.
    if fn is mixlogistic_logcdf:
      assert np.all(np.asarray(grads[0]) >= 0)
    if fn is mixlogistic_logsf:
      assert np.all(np.asarray(grads[0]) <= 0)


def test_invcdf_finite_at_extremes():
  _, logits, means, log_scales = _extreme_grid()
  for y in (1e-30, 1e-7, 0.5, 1.0 - 1e-7):
    ys = np.full(logits.shape[:1], y, np.float32)
    x = _invcdf(ys, logits, means, log_scales)
    chex.assert_tree_all_finite(x)
    # And x is where it should be: logit F(x) hits the target to within the resolution of a
    # float32 x at |x| ~ 1e3 seen through the steepest slope, 1 / exp(-7).
    t = float(np.log(np.float32(y)) - np.log1p(-np.float32(y)))
    logit = np.asarray(_forward(x, logits, means, log_scales)[3], np.float64)
    res = 2 * EPS32 * np.maximum(np.abs(np.asarray(x)), 1.0) * np.exp(7.0)
    assert np.all(np.abs(logit - t) <= res + 1e-4 * (1 + abs(t))), np.max(np.abs(logit - t))


# ----------------------------------------------------------------------------------------
# 7. jit and vmap.


def test_jit_matches_eager():
  rng = np.random.default_rng(14)
  x, logits, means, log_scales = _f32(rng.normal(0.0, 3.0, N), *_moderate_params(rng))
  jitted = _forward(x, logits, means, log_scales)
  # Eager logit_cdf runs logcdf and logsf; eager invcdf runs invlogit_cdf.
  chex.assert_trees_all_close(jitted[3], mixlogistic_logit_cdf(x, logits, means, log_scales),
                              rtol=4 * EPS32, atol=4 * EPS32)
  y = jax.nn.sigmoid(x)
  chex.assert_trees_all_close(_invcdf(y, logits, means, log_scales),
                              mixlogistic_invcdf(y, logits, means, log_scales),
                              rtol=1e-6, atol=1e-6)


@jax.jit
def _vmapped(x, y, logits, means, log_scales):
  # Per example: a scalar x and (K,) parameters.
  logit = jax.vmap(mixlogistic_logit_cdf)(x, logits, means, log_scales)
  inv = jax.vmap(mixlogistic_invlogit_cdf)(x, logits, means, log_scales)
  # Parameters shared across the batch, with in_axes=None.
  shared = jax.vmap(mixlogistic_invcdf, in_axes=(0, None, None, None))(
      y, logits[0], means[0], log_scales[0])
  grads = jax.vmap(jax.grad(mixlogistic_invlogit_cdf, argnums=(0, 1, 2, 3)))(
      x, logits, means, log_scales)
  return logit, inv, shared, grads


def test_vmap_matches_batched_call():
  rng = np.random.default_rng(15)
  x, logits, means, log_scales = _f32(rng.normal(0.0, 3.0, N), *_moderate_params(rng))
  y = np.asarray(jax.nn.sigmoid(x))
  logit, inv, shared, grads = _vmapped(x, y, logits, means, log_scales)
  close = lambda a, b, tol=1e-6: chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)
  close(logit, _forward(x, logits, means, log_scales)[3])
  close(inv, _invlogit(x, logits, means, log_scales))
  bc = lambda p: np.broadcast_to(p[0], (N, K))
  close(shared, _invcdf(y, bc(logits), bc(means), bc(log_scales)))
  # vmap of the custom_jvp gradient equals the gradient of the batched sum.
  close(grads, _grad_invlogit(x, logits, means, log_scales), 1e-5)


# ----------------------------------------------------------------------------------------
# 8. Normalisation.

_MIX3 = (np.array([0.3, -1.0, 1.2]), np.array([-4.0, 0.5, 6.0]), np.array([0.7, -2.0, -0.5]))


def test_density_integrates_to_one(x64):
  params = tuple(jnp.asarray(p)[None] for p in _MIX3)
  fwd = lambda t: _forward(jnp.asarray([t]), *params)
  pdf = lambda t: float(jnp.exp(fwd(t)[0])[0])
  quad = lambda a, b: integrate.quad(pdf, a, b, limit=200, epsabs=1e-13, epsrel=1e-12)[0]
  pieces = [quad(-np.inf, -4.0), quad(-4.0, 0.5), quad(0.5, 6.0), quad(6.0, np.inf)]
  assert abs(sum(pieces) - 1.0) < 1e-8, sum(pieces)
  # The running integral is the CDF.
  for a, part in ((-4.0, pieces[0]), (0.5, sum(pieces[:2])), (6.0, sum(pieces[:3]))):
    cdf = float(jnp.exp(fwd(a)[1])[0])
    assert abs(part - cdf) < 1e-8, (a, part, cdf)


def test_density_integrates_to_one_float32_grid():
  grid = np.linspace(-150.0, 150.0, 600001)  # Step 5e-4, far below the smallest scale, 0.135.
  bc = lambda p: np.broadcast_to(np.float32(p), grid.shape + (3,))
  log_dens = _forward(grid.astype(np.float32), *(bc(p) for p in _MIX3))[0]
  dens = np.exp(np.asarray(log_dens, np.float64))
  total = np.trapezoid(dens, grid) if hasattr(np, 'trapezoid') else np.trapz(dens, grid)
  assert abs(total - 1.0) < 1e-4, total
