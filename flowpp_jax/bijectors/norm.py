"""Data-initialised elementwise affine layers: the official per-position Norm and ActNorm."""
from typing import Tuple

import jax.numpy as jnp

from flowpp_jax.bijectors.base import PartwiseBijector


class _DataInitAffine(PartwiseBijector):
  """y = x * g + b, with g and b set on the first batch so that y has zero mean and unit
  variance over the reduced axes. On a tuple each part has its own g and b, as in the
  official code. Subclasses choose ``reduce_axes`` (the axes g and b are shared over).
  """
  init_scale: float = 1.0
  reduce_axes: Tuple[int, ...] = (0,)

  def _part(self, index, x, inverse):
    axes = self.reduce_axes

    def init_g(_):
      var = jnp.var(x, axis=axes, keepdims=True)[0]
      return self.init_scale / jnp.sqrt(var + 1e-8)

    g = self.param(f'g{index}', init_g)
    b = self.param(f'b{index}', lambda _: -jnp.mean(x, axis=axes, keepdims=True)[0] * g)
    # Clamped as in the reference so the log-det and the inverse stay finite.
    g = jnp.maximum(g, 1e-10)
    # Sum log g over all positions of one example: broadcast to [H, W, C] first.
    log_det = jnp.sum(jnp.broadcast_to(jnp.log(g), x.shape[1:]))
    if inverse:
      return (x - b) / g, -log_det
    return x * g + b, log_det


class Norm(_DataInitAffine):
  """The official Norm: g, b of shape [H, W, C] (per position and channel), data-initialised
  from the first batch: g = 1 / sqrt(var + 1e-8), b = -mean * g. Input [B, H, W, C] or a
  tuple of two. log|det| = sum log g.
  """
  reduce_axes: Tuple[int, ...] = (0,)


class ActNorm(_DataInitAffine):
  """Glow-style per-channel variant: g, b of shape [C], statistics over batch and space.
  log|det| = H * W * sum log g.
  """
  reduce_axes: Tuple[int, ...] = (0, 1, 2)
