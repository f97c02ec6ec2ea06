"""Volume-preserving reshuffles: splits into two halves, their merges, flips and squeezes.

Every log-det here is exactly zero. Split forward: [B, H, W, C] -> (x1, x2); wrap a split in
Inverse() to merge.
"""
import jax.numpy as jnp

from flowpp_jax.bijectors.base import Bijector, zero_log_det


class CheckerboardSplit(Bijector):
  """The official "checkerboard": alternating columns. [B, H, W, C] -> 2 x [B, H, W/2, C].

  x1 holds the even columns, x2 the odd ones (the official reshape to [B, H, W/2, 2, C]).
  """

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    if not inverse:
      b, h, w, c = x.shape
      pairs = x.reshape(b, h, w // 2, 2, c)
      return (pairs[:, :, :, 0], pairs[:, :, :, 1]), zero_log_det(x)
    x1, x2 = x
    b, h, w_half, c = x1.shape
    return jnp.stack([x1, x2], axis=3).reshape(b, h, 2 * w_half, c), zero_log_det(x)


class Checkerboard2DSplit(Bijector):
  """A true 2-D checkerboard: x1 holds the pixels with (row + column) even.

  [B, H, W, C] -> 2 x [B, H, W/2, C]; row r of x1 holds columns r % 2, r % 2 + 2, ...
  """

  @staticmethod
  def _odd_rows(h):
    return (jnp.arange(h) % 2 == 1)[None, :, None, None]

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    if not inverse:
      b, h, w, c = x.shape
      pairs = x.reshape(b, h, w // 2, 2, c)
      even, odd = pairs[:, :, :, 0], pairs[:, :, :, 1]
      odd_rows = self._odd_rows(h)
      return (jnp.where(odd_rows, odd, even), jnp.where(odd_rows, even, odd)), zero_log_det(x)
    x1, x2 = x
    b, h, w_half, c = x1.shape
    odd_rows = self._odd_rows(h)
    even, odd = jnp.where(odd_rows, x2, x1), jnp.where(odd_rows, x1, x2)
    return jnp.stack([even, odd], axis=3).reshape(b, h, 2 * w_half, c), zero_log_det(x)


class ChannelSplit(Bijector):
  """[B, H, W, C] -> 2 x [B, H, W, C/2]: the first and second half of the channels."""

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    if not inverse:
      x1, x2 = jnp.split(x, 2, axis=-1)
      return (x1, x2), zero_log_det(x)
    return jnp.concatenate(x, axis=-1), zero_log_det(x)


class TupleFlip(Bijector):
  """(x1, x2) -> (x2, x1), so the next coupling transforms the other half."""

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    x1, x2 = x
    return (x2, x1), zero_log_det(x)


class SpaceToDepth(Bijector):
  """Squeeze: [B, H, W, C] -> [B, H/2, W/2, 4C], with TensorFlow's space_to_depth order
  (output channel = (dy * 2 + dx) * C + c)."""
  block_size: int = 2

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    k = self.block_size
    b, h, w, c = x.shape
    if not inverse:
      y = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
      return y.reshape(b, h // k, w // k, k * k * c), zero_log_det(x)
    y = x.reshape(b, h, w, k, k, c // (k * k)).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, h * k, w * k, c // (k * k)), zero_log_det(x)
