"""Coupling layers: the logistic-mixture-CDF coupling of Flow++ and an affine one (ablation).

Both act on a tuple (x1, x2) of [B, H, W, C] arrays: x1 passes through unchanged and
conditions, through ``net`` (a Conditioner), an elementwise bijection of x2.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flowpp_jax import logistic
from flowpp_jax.bijectors.base import Bijector, sum_per_example
from flowpp_jax.dtypes import at_least_float32

MIN_LOG_SCALE = -7.0  # the reference clamps the mixture log-scales here


class MixLogisticCoupling(Bijector):
  """y2 = exp(s) * logit(F(x2)) + t, F a K-component logistic mixture CDF, s = tanh(.).

  ``net(x1, context, num_outputs=2 + 3K)`` gives per element of x2: s_raw, t, K logits, K
  means and K log-scales (clamped at -7). log|dy2/dx2| = log f - log F - log(1 - F) + s,
  exact and elementwise, all in log space (see flowpp_jax.logistic). The inverse solves
  logit F(x2) = (y2 - t) exp(-s) by bisection (``mixlogistic_invlogit_cdf``, error <= 1 ulp
  of the float32-evaluated root). The mixture math is float32 (float64 for float64 inputs)
  whatever ``net`` computes in.
  """
  net: Any
  components: int = 32

  @nn.compact
  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    x1, x2 = x
    params = self.elementwise_params(x1, context, deterministic, at_least_float32(x2.dtype))
    out = self.transform(x2, params, inverse)
    # The log-det is evaluated on the untransformed side in both directions.
    x2 = out if inverse else x2
    s, _, mix = params
    log_det = (logistic.mixlogistic_logpdf(x2, *mix) - logistic.mixlogistic_logcdf(x2, *mix)
               - logistic.mixlogistic_logsf(x2, *mix) + s)
    log_det = sum_per_example(log_det)
    return (x1, out), (-log_det if inverse else log_det)

  def elementwise_params(self, x1, context=None, deterministic=True, dtype=jnp.float32):
    """The bijection of x2 that x1 selects: (s, t, (logits, means, log_scales)), [B, H, W, C]
    and [B, H, W, C, K] arrays of ``dtype``."""
    h = self.net(x1, context, num_outputs=2 + 3 * self.components,
                 deterministic=deterministic).astype(dtype)
    logits, means, log_scales = jnp.split(h[..., 2:], 3, axis=-1)
    return (jnp.tanh(h[..., 0]), h[..., 1],
            (logits, means, jnp.maximum(log_scales, MIN_LOG_SCALE)))

  @staticmethod
  def transform(x2, params, inverse=False, exact=True):
    """y2 from x2 (or x2 from y2, ``inverse``) under ``elementwise_params``. ``exact=False``:
    the inverse solves by Newton's method to 2^-20 instead of bisecting to the last ulp, about
    2x faster (the compression coder's inverse)."""
    s, t, mix = params
    if inverse:
      solve = (logistic.mixlogistic_invlogit_cdf if exact
               else logistic.mixlogistic_invlogit_cdf_newton)
      return solve((x2 - t) * jnp.exp(-s), *mix)
    return jnp.exp(s) * logistic.mixlogistic_logit_cdf(x2, *mix) + t


class AffineCoupling(Bijector):
  """The ablation's coupling: y2 = x2 * exp(s) + t, s = tanh(s_raw), log|det| = sum s.

  ``net(x1, context, num_outputs=2)`` gives s_raw and t per element of x2.
  """
  net: Any

  @nn.compact
  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    x1, x2 = x
    params = self.elementwise_params(x1, context, deterministic, at_least_float32(x2.dtype))
    log_det = sum_per_example(params[0])
    return (x1, self.transform(x2, params, inverse)), (-log_det if inverse else log_det)

  def elementwise_params(self, x1, context=None, deterministic=True, dtype=jnp.float32):
    """(s, t), [B, H, W, C] arrays of ``dtype``: the affine map of x2 that x1 selects."""
    h = self.net(x1, context, num_outputs=2, deterministic=deterministic).astype(dtype)
    return jnp.tanh(h[..., 0]), h[..., 1]

  @staticmethod
  def transform(x2, params, inverse=False, exact=True):
    """y2 from x2 (or x2 from y2, ``inverse``); closed form both ways, so ``exact`` is moot."""
    del exact
    s, t = params
    if inverse:
      return (x2 - t) * jnp.exp(-s)
    return x2 * jnp.exp(s) + t
