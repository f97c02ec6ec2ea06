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
    h = self.net(x1, context, num_outputs=2 + 3 * self.components,
                 deterministic=deterministic).astype(at_least_float32(x2.dtype))
    s, t = jnp.tanh(h[..., 0]), h[..., 1]
    logits, means, log_scales = jnp.split(h[..., 2:], 3, axis=-1)
    mix = (logits, means, jnp.maximum(log_scales, MIN_LOG_SCALE))
    if inverse:
      # From here on x2 is the untransformed side in both directions; the log-det is
      # evaluated there, and ``out`` is what this call returns.
      out = x2 = logistic.mixlogistic_invlogit_cdf((x2 - t) * jnp.exp(-s), *mix)
    else:
      out = jnp.exp(s) * logistic.mixlogistic_logit_cdf(x2, *mix) + t
    log_det = (logistic.mixlogistic_logpdf(x2, *mix) - logistic.mixlogistic_logcdf(x2, *mix)
               - logistic.mixlogistic_logsf(x2, *mix) + s)
    log_det = sum_per_example(log_det)
    return (x1, out), (-log_det if inverse else log_det)


class AffineCoupling(Bijector):
  """The ablation's coupling: y2 = x2 * exp(s) + t, s = tanh(s_raw), log|det| = sum s.

  ``net(x1, context, num_outputs=2)`` gives s_raw and t per element of x2.
  """
  net: Any

  @nn.compact
  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    x1, x2 = x
    h = self.net(x1, context, num_outputs=2, deterministic=deterministic)
    h = h.astype(at_least_float32(x2.dtype))
    s, t = jnp.tanh(h[..., 0]), h[..., 1]
    if inverse:
      return (x1, (x2 - t) * jnp.exp(-s)), -sum_per_example(s)
    return (x1, x2 * jnp.exp(s) + t), sum_per_example(s)
