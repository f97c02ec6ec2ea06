"""Parameter-free elementwise bijectors: logit preprocessing ("ImgProc") and Sigmoid."""
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax.bijectors.base import Bijector, sum_per_example


def _log_sigmoid_both(z):
  """log sigmoid(z) + log sigmoid(-z) = log of the sigmoid's derivative, finite for any z."""
  return jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)


class Sigmoid(Bijector):
  """y = sigmoid(x), elementwise on [B, ...]. log|dy/dx| = log s(x) + log s(-x)."""

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    if not inverse:
      return jax.nn.sigmoid(x), sum_per_example(_log_sigmoid_both(x))
    z = jnp.log(x) - jnp.log1p(-x)
    return z, -sum_per_example(_log_sigmoid_both(z))


class LogitPreprocess(Bijector):
  """The paper's "ImgProc": [0, L]^D -> R^D, y = logit(alpha + (1 - 2 alpha) x / L).

  x: [B, H, W, C] dequantised data in [0, num_levels]. The scale x / L sits in this log-det,
  so bits/dim need no separate + D log L term. alpha = 0.05 as in the reference.
  """
  num_levels: int = 256
  alpha: float = 0.05

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    scale = (1.0 - 2.0 * self.alpha) / self.num_levels
    log_scale = float(np.log(scale))
    if not inverse:
      p = self.alpha + scale * x
      y = jnp.log(p) - jnp.log1p(-p)
      return y, sum_per_example(log_scale - _log_sigmoid_both(y))
    return ((jax.nn.sigmoid(x) - self.alpha) / scale,
            sum_per_example(_log_sigmoid_both(x) - log_scale))
