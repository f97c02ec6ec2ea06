"""Invertible 1x1 convolution ("Pointwise" in the official code; Glow's invconv)."""
import jax.numpy as jnp

from flowpp_jax.bijectors.base import PartwiseBijector
from flowpp_jax.nn.layers import normal_init


class Pointwise(PartwiseBijector):
  """y[b, h, w, :] = x[b, h, w, :] @ W, W of shape [C, C] initialised to I + 0.001 N(0, 1).

  Input [B, H, W, C], or a tuple of two with one W each. log|det| = H * W * log|det W|, from
  an LU factorisation (slogdet), which is accurate to float32 rounding for the well
  conditioned near-identity matrices this layer starts at.
  """
  noise_scale: float = 0.001

  def _part(self, index, x, inverse):
    channels = x.shape[-1]
    w = self.param(f'W{index}', lambda rng: jnp.eye(channels)
                   + normal_init(self.noise_scale)(rng, (channels, channels)))
    log_det = x.shape[1] * x.shape[2] * jnp.linalg.slogdet(w)[1]
    if inverse:
      return jnp.einsum('...c,cd->...d', x, jnp.linalg.inv(w)), -log_det
    return jnp.einsum('...c,cd->...d', x, w), log_det
