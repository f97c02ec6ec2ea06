"""Mixture-of-logistics density, CDF and inverse CDF (Flow++ section 3.2).

Every function takes ``x`` (or ``y``) of any shape ``S`` and mixture parameters of shape
``S + (K,)``: unnormalised ``logits``, ``means`` and ``log_scales``. Everything is computed in
log space so that float32 stays finite far into the tails: for ``|x| <= 1e4`` and log-scales
down to the coupling's clamp of -7, the standardised argument reaches about 1e7, where
``log sigmoid`` is still exact (it is ``-softplus(-z)``) and never rounds to ``log 0``.
"""
import jax
import jax.numpy as jnp
from jax import lax

def _standardise(x, means, log_scales):
  """Returns z = (x - mu_k) / s_k, shape S + (K,)."""
  return (x[..., None] - means) * jnp.exp(-log_scales)


def _log_weights(logits):
  return jax.nn.log_softmax(logits, axis=-1)


def mixlogistic_logpdf(x, logits, means, log_scales):
  """log f(x) for f = sum_k pi_k Logistic(x; mu_k, s_k). Shapes: x S, params S+(K,) -> S."""
  z = _standardise(x, means, log_scales)
  # log of the logistic pdf, written as log sigmoid(z) + log sigmoid(-z) - log s: both terms
  # stay finite for |z| ~ 1e7, where exp(-z) / (1 + exp(-z))**2 would underflow to 0.
  log_pdf_k = jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z) - log_scales
  return jax.nn.logsumexp(_log_weights(logits) + log_pdf_k, axis=-1)


def mixlogistic_logcdf(x, logits, means, log_scales):
  """log F(x). Shapes: x S, params S+(K,) -> S."""
  z = _standardise(x, means, log_scales)
  return jax.nn.logsumexp(_log_weights(logits) + jax.nn.log_sigmoid(z), axis=-1)


def mixlogistic_logsf(x, logits, means, log_scales):
  """log(1 - F(x)), computed directly rather than as log1p(-F). Shapes as logcdf."""
  z = _standardise(x, means, log_scales)
  return jax.nn.logsumexp(_log_weights(logits) + jax.nn.log_sigmoid(-z), axis=-1)


def mixlogistic_logit_cdf(x, logits, means, log_scales):
  """logit F(x) = log F(x) - log(1 - F(x)), finite wherever both logs are. Shapes as logcdf.

  Forming F first and then taking its logit would round F to 0 or 1 in float32 once
  |logit F| exceeds about 17, giving +-inf; the difference of the two logs does not.
  """
  return (mixlogistic_logcdf(x, logits, means, log_scales)
          - mixlogistic_logsf(x, logits, means, log_scales))


_INT_OF = {jnp.dtype(jnp.float32): jnp.int32, jnp.dtype(jnp.float64): jnp.int64}


def _to_ordered(x):
  """Maps floats to same-width ints so that integer order equals float order (+-0 tie)."""
  int_dtype = _INT_OF[x.dtype]
  bits = lax.bitcast_convert_type(x, int_dtype)
  magnitude = bits & jnp.array(jnp.iinfo(int_dtype).max, int_dtype)
  return jnp.where(bits < 0, -magnitude, bits)


def _from_ordered(key, dtype):
  sign_bit = jnp.array(jnp.iinfo(key.dtype).min, key.dtype)
  return lax.bitcast_convert_type(jnp.where(key < 0, (-key) | sign_bit, key), dtype)


def _float_dtype(*arrays):
  dtype = jnp.result_type(*arrays)
  return dtype if dtype in _INT_OF else jnp.dtype(jnp.float32)


@jax.custom_jvp
def mixlogistic_invlogit_cdf(target, logits, means, log_scales):
  """Solves logit F(x) = target for x by bisection. Shapes: target S, params S+(K,) -> S.

  Bracket: F is a convex combination of sigmoid((x - mu_k)/s_k), so logit F(x) lies between
  the smallest and largest (x - mu_k)/s_k. Hence the root lies in
  [min_k(mu_k + s_k * target), max_k(mu_k + s_k * target)], which is tight when the
  components agree and never needs the official code's +-200 * sum(s) margin.

  Iterations: the bisection runs over the floats' bit patterns ordered as integers, not over
  real midpoints. A float32 bracket holds at most 2**32 patterns, so 32 halvings (64 for
  float64) leave two adjacent floats around the root, whatever the bracket. Error bound: the
  result x satisfies |x - x*| <= ulp(x*), where x* is the root of the logit F evaluated in
  the working precision: a relative error of at most 2**-23 in float32. The exact root
  differs from x* only by the rounding of logit F itself divided by its slope
  f / (F (1 - F)).

  A fixed-length ``lax.fori_loop``, so jit- and vmap-safe. Differentiable: the derivative
  comes from the implicit function theorem, not from the loop.
  """
  return _bisect(target, logits, means, log_scales)


def _bracket(target, logits, means, log_scales):
  """The arguments in their common float dtype, and [lo, hi] holding the root of
  logit F(x) = target (see mixlogistic_invlogit_cdf)."""
  dtype = _float_dtype(target, logits, means, log_scales)
  target, logits, means, log_scales = (
      jnp.asarray(a, dtype) for a in (target, logits, means, log_scales))
  ends = means + jnp.exp(log_scales) * target[..., None]
  lo, hi = jnp.min(ends, axis=-1), jnp.max(ends, axis=-1)
  # Widen by a few ulps so that rounding in `ends` cannot exclude the root.
  finfo = jnp.finfo(dtype)
  pad = 4 * finfo.eps * jnp.maximum(jnp.abs(lo), jnp.abs(hi)) + finfo.tiny
  return (target, logits, means, log_scales), (lo - pad, hi + pad)


@jax.jit
def _bisect(target, logits, means, log_scales):
  (target, logits, means, log_scales), (lo, hi) = _bracket(target, logits, means, log_scales)
  dtype = target.dtype
  finfo = jnp.finfo(dtype)
  keys = (_to_ordered(lo), _to_ordered(hi))

  def halve(_, keys):
    lo_key, hi_key = keys
    # floor((lo + hi) / 2) without integer overflow.
    mid_key = (lo_key >> 1) + (hi_key >> 1) + (lo_key & hi_key & 1)
    mid = _from_ordered(mid_key, dtype)
    below = mixlogistic_logit_cdf(mid, logits, means, log_scales) < target
    return jnp.where(below, mid_key, lo_key), jnp.where(below, hi_key, mid_key)

  _, hi_key = lax.fori_loop(0, finfo.bits, halve, keys)
  return _from_ordered(hi_key, dtype)


NEWTON_TOLERANCE = 2.0 ** -20  # relative: the last step is below this times 1 + |x|
# In float64 (the codec's): 2^-44, so that the root's error is far below the drift between
# two machines' float64 arithmetic, not 2^-20 of it (docs/compression.md, "Portability").
NEWTON_TOLERANCE_FLOAT64 = 2.0 ** -44
NEWTON_MAX_STEPS = 64


def mixlogistic_invlogit_cdf_newton(target, logits, means, log_scales):
  """Solves logit F(x) = target for x by safeguarded Newton steps: about 5x fewer mixture
  evaluations than the bisection, to a tolerance rather than to the last ulp. Shapes as
  mixlogistic_invlogit_cdf.

  From the mixture-weighted mean of the components' roots, each step is Newton's on logit F
  (slope f / (F (1 - F))) unless it would leave the bracket that the signs seen so far keep
  (that of mixlogistic_invlogit_cdf), where it bisects instead. Steps stop when every
  element's last step is below NEWTON_TOLERANCE (1 + |x|) (NEWTON_TOLERANCE_FLOAT64 for
  float64 inputs), or after NEWTON_MAX_STEPS. The count depends on the whole input, so the
  same inputs give the same bits: the local bits-back coder's inverse needs exactly that, and
  an error far below its Gaussians' scale.
  Not differentiable.
  """
  return _newton(target, logits, means, log_scales)


def _newton_tolerance(dtype) -> float:
  return NEWTON_TOLERANCE_FLOAT64 if dtype == jnp.float64 else NEWTON_TOLERANCE


@jax.jit
def _newton(target, logits, means, log_scales):
  (target, logits, means, log_scales), (lo, hi) = _bracket(target, logits, means, log_scales)
  log_w = _log_weights(logits)
  start = jnp.sum(jnp.exp(log_w) * (means + jnp.exp(log_scales) * target[..., None]), -1)

  def residual_and_slope(x):
    z = _standardise(x, means, log_scales)
    log_cdf_k, log_sf_k = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    log_cdf = jax.nn.logsumexp(log_w + log_cdf_k, axis=-1)
    log_sf = jax.nn.logsumexp(log_w + log_sf_k, axis=-1)
    log_pdf = jax.nn.logsumexp(log_w + log_cdf_k + log_sf_k - log_scales, axis=-1)
    return log_cdf - log_sf - target, jnp.exp(log_pdf - log_cdf - log_sf)

  def step(state):
    count, x, lo, hi, _ = state
    residual, slope = residual_and_slope(x)
    below = residual < 0  # the root lies above x
    lo, hi = jnp.where(below, x, lo), jnp.where(below, hi, x)
    newton = x - residual / slope
    new = jnp.where((newton >= lo) & (newton <= hi), newton, 0.5 * lo + 0.5 * hi)
    return count + 1, new, lo, hi, jnp.max(jnp.abs(new - x) / (1 + jnp.abs(new)))

  def unfinished(state):
    count, *_, last = state
    return (count < NEWTON_MAX_STEPS) & (last > _newton_tolerance(target.dtype))

  state = (0, start, lo, hi, jnp.array(jnp.inf, target.dtype))
  return lax.while_loop(unfinished, step, state)[1]


@mixlogistic_invlogit_cdf.defjvp
def _invlogit_cdf_jvp(primals, tangents):
  target, logits, means, log_scales = primals
  x = mixlogistic_invlogit_cdf(*primals)
  params = (logits, means, log_scales)
  # Implicit function theorem on g(x, params) = logit F(x) - target = 0:
  # dx = (d target - d_params g . d params) / d_x g, with d_x g = f / (F (1 - F)).
  d_params = tuple(jnp.asarray(t, x.dtype) for t in tangents[1:])
  _, dg = jax.jvp(lambda *p: mixlogistic_logit_cdf(x, *p),
                  tuple(jnp.asarray(p, x.dtype) for p in params), d_params)
  slope = jnp.exp(mixlogistic_logpdf(x, *params) - mixlogistic_logcdf(x, *params)
                  - mixlogistic_logsf(x, *params))
  return x, (jnp.asarray(tangents[0], x.dtype) - dg) / slope


def mixlogistic_invcdf(y, logits, means, log_scales):
  """F^{-1}(y) for y in (0, 1). Shapes: y S, params S+(K,) -> S. See mixlogistic_invlogit_cdf.

  y is taken to logit space first (log y - log1p(-y)), so probabilities close to 0 or 1 keep
  their full float32 resolution.
  """
  y = jnp.asarray(y, _float_dtype(y, logits, means, log_scales))
  return mixlogistic_invlogit_cdf(jnp.log(y) - jnp.log1p(-y), logits, means, log_scales)
