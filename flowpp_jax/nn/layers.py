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

_W_STDDEV = 0.05  # The reference draws every conv and dense weight from N(0, 0.05^2).
_VAR_EPS = 1e-8


def normal_init(stddev: float):
  """N(0, stddev^2) initializer that draws a flat vector and reshapes it.

  Same distribution as nn.initializers.normal, but XLA:CPU compiles the partitionable
  threefry for a flat shape in a fraction of the time it takes for 4-D kernel shapes (seen:
  0.8 s against 7.7 s per shape with jax 0.10), which dominated model init and its compile.
  """
  def init(rng, shape, dtype=jnp.float32):
    return stddev * jax.random.normal(rng, (math.prod(shape),), dtype).reshape(shape)
  return init


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _conv_explicit_grad(x, w):
  return _conv(x, w)


def _conv_explicit_grad_fwd(x, w):
  return _conv(x, w), (x, w)


def _conv_explicit_grad_bwd(residuals, dy):
  x, w = residuals
  k, h, width = w.shape[0], x.shape[1], x.shape[2]
  # d/dx: the same 'SAME' convolution of dy with the kernel flipped in space and its in/out
  # channels swapped (odd k: the padding is symmetric).
  dx = _conv(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  # d/dw[i, j] = sum over batch and positions of x shifted by (i, j) times dy: k*k matmuls.
  pad = k // 2
  x_pad = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  acc = at_least_float32(w.dtype)
  dw = jnp.stack([jnp.stack([
      jnp.einsum('bhwc,bhwo->co', x_pad[:, i:i + h, j:j + width], dy,
                 preferred_element_type=acc) for j in range(k)]) for i in range(k)])
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_explicit_grad.defvjp(_conv_explicit_grad_fwd, _conv_explicit_grad_bwd)


def conv2d(x, w):
  """'SAME', stride-1 convolution: x [B, H, W, Cin], w [k, k, Cin, Cout] (k odd) ->
  [B, H, W, Cout].

  On the CPU backend its gradient is written out: the input gradient as a forward
  convolution with the flipped kernel, the kernel gradient as k*k matmuls. XLA:CPU runs the
  backward convolutions autodiff emits through a generic, slow emitter when they sit inside a
  loop body (``model.scan_layers``): measured 27x slower than the same layers unrolled (four
  3x3 convs, 96 channels, batch 64), against 1.0x with the written-out gradient, which is
  also a little faster unrolled. Other backends keep autodiff's convolutions (cuDNN, TPU).
  """
  if w.shape[0] % 2 != 1 or w.shape[0] != w.shape[1]:
    raise ValueError(f'conv2d takes square kernels of odd size, got {w.shape[:2]}')
  if jax.default_backend() == 'cpu':
    return _conv_explicit_grad(x, w)
  return _conv(x, w)


def plain_array(b):
  """``b`` [F], unchanged; on the CPU backend as the product b I with the identity [F, F].

  Under ``model.scan_layers`` each layer's bias is a dynamic slice of the stacked parameters,
  and XLA:CPU fuses that slice into the elementwise ops that read it. When they read it
  through two static slices, as the gate's halves and concat_elu's do, it emits that fusion
  as scalar code with a scalar exp: the attention block's gate at 4 images took 1.1 ms
  instead of 0.15 ms (jax 0.10.2 and 0.12). The product is exact (b_j * 1 plus zeros) and
  costs F^2 multiply-adds, and its result is an ordinary array the fusion vectorises over.
  Other backends get ``b`` as it is.
  """
  if jax.default_backend() != 'cpu':
    return b
  return jnp.dot(b, jnp.eye(b.shape[-1], dtype=b.dtype), precision=lax.Precision.HIGHEST)


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
