"""Convolution and dense layers with data-dependent initialisation, and small activations.

Data-dependent init (Salimans & Kingma 2016, as in the official code): on the batch that
``init`` sees, the layer's output has zero mean and standard deviation ``init_scale`` per
output channel. Parameters are float32; ``dtype`` is the compute dtype of the matmul/conv
(bfloat16 halves activation memory; the statistics and the bias add stay float32).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.dtypes import at_least_float32, compute_dtype
from flowpp_jax.nn.backend import bernoulli, conv2d, plain_array

_W_STDDEV = 0.05  # The reference draws every conv and dense weight from N(0, 0.05^2).
_VAR_EPS = 1e-8


def normal_init(stddev: float):
  """N(0, stddev^2) initializer that draws a flat vector and reshapes it.

  Same distribution as nn.initializers.normal, but XLA:CPU compiles the partitionable
  threefry for a flat shape in a fraction of the time it takes for 4-D kernel shapes.
  """
  def init(rng, shape, dtype=jnp.float32):
    return stddev * jax.random.normal(rng, (math.prod(shape),), dtype).reshape(shape)
  return init


def concat_elu(x):
  """elu([x, -x]) on the last axis: [..., C] -> [..., 2C].

  One expm1 per input element instead of one per output element: where x > 0, elu(x) = x
  and elu(-x) = expm1(-x); elsewhere elu(x) = expm1(x) and elu(-x) = -x. Values and
  gradients equal those of jax.nn.elu on the concatenation, at x = 0 included (the expm1
  branch is taken there, as jax.nn.elu takes it).
  """
  positive = x > 0
  e = jnp.expm1(jnp.where(positive, -x, x))
  return jnp.concatenate([jnp.where(positive, x, e), jnp.where(positive, e, -x)], axis=-1)


def gate(x):
  """Gated linear unit: [..., 2C] -> [..., C], a * sigmoid(b)."""
  a, b = jnp.split(x, 2, axis=-1)
  return a * jax.nn.sigmoid(b)


class Dropout(nn.Module):
  """flax.linen.Dropout's computation, mask for mask: the same rng stream (named so, it is
  the same module path) and the same draws, from ``backend.bernoulli``. x [...] -> [...],
  each entry zeroed with probability ``rate``, the rest scaled by 1 / (1 - rate)."""
  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = bernoulli(self.make_rng('dropout'), keep, x.shape)
    return lax.select(mask, x / keep, jnp.zeros_like(x))


class Conv(nn.Module):
  """'SAME' convolution [B, H, W, Cin] -> [B, H, W, features] with data-dependent init.

  kernel_size=1 is the reference's ``nin`` (a dense layer applied at every position), stored
  as W [Cin, features]; kernel_size=3 stores W [3, 3, Cin, features]. With ``weight_norm``
  the weight is g * V / ||V|| (norm over all axes but the last), as in the official
  ImageNet32 code; otherwise a plain W rescaled once at init (CIFAR-10, ImageNet64).
  """
  features: int
  kernel_size: int = 3
  init_scale: float = 1.0
  weight_norm: bool = False
  dtype: Any = jnp.float32

  def _apply(self, x, w):
    out_dtype = at_least_float32(x.dtype)
    dtype = compute_dtype(x.dtype, self.dtype)
    x, w = x.astype(dtype), w.astype(dtype)
    if self.kernel_size == 1:
      y = jnp.einsum('...c,cd->...d', x, w)
    else:
      y = conv2d(x, w)
    return y.astype(out_dtype)

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    shape = (x.shape[-1], self.features) if k == 1 else (k, k, x.shape[-1], self.features)
    w_axes = tuple(range(len(shape) - 1))
    stat_axes = tuple(range(x.ndim - 1))

    def data_scale(y):
      return self.init_scale * lax.rsqrt(jnp.var(y, axis=stat_axes) + _VAR_EPS)

    if self.weight_norm:
      v = self.param('V', normal_init(_W_STDDEV), shape)
      y = self._apply(x, v * lax.rsqrt(jnp.sum(jnp.square(v), axis=w_axes)))
      y = y * self.param('g', lambda _: data_scale(y))
    else:
      def init_w(rng):
        w = normal_init(_W_STDDEV)(rng, shape)
        return w * data_scale(self._apply(x, w))
      y = self._apply(x, self.param('W', init_w))
    return y + plain_array(self.param('b', lambda _: -jnp.mean(y, axis=stat_axes)))
