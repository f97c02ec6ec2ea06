"""Local bits-back coding of one flow layer (Ho, Lohn and Abbeel, NeurIPS 2019).

A layer y = f(x) moves a value from one grid (step delta_in) to another (delta_out) at a cost
of -log2 |det df/dx| - log2(delta_in / delta_out) bits, never forming the full Jacobian:
- encode: pop y from the stack under N(f(x), sigma^2 J J^T), the Gaussian that f's local
  linearisation J gives to x + N(0, sigma^2 I) (the bits-back step), then push x under
  N(f^{-1}(y), sigma^2 I);
- decode: the mirror image: pop x under N(f^{-1}(y), sigma^2 I), then push y under
  N(f(x), sigma^2 J J^T), which returns the popped bits to the stack.
Both sides evaluate f, its slopes and f^{-1} at the same grid values, so they derive the same
Gaussians. sigma, in x's units, sets how local "local" is: the overhead grows with the
curvature of f over a few sigma, and the grids must be much finer than sigma and than
sigma * |slope|.

Two Jacobian shapes are coded here:
- elementwise layers (logit preprocessing, Norm, Sigmoid, a coupling's transform of x2 given
  x1): diagonal J, each value coded alone;
- per-position linear maps (the invertible 1x1 convolution): y = x W at every position, J the
  C x C matrix W, y coded channel by channel under the Gaussian's conditionals.
Values are int64 grid indices; the functions given take and return float64 values.
"""
from typing import Callable, Optional, Tuple

import numpy as np

from flowpp_jax.compression.coder import RANGE, Stack

# The input side's Gaussian N(f^{-1}(y), sigma^2) is cut wider than the output side's: a value
# popped at the edge of the output side's range (RANGE stds rounded up to a power of two of
# bins: under 2 RANGE stds) maps back to under 2 RANGE input stds.
INPUT_RANGE = 2.5 * RANGE

Elementwise = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]  # x -> (f(x), f'(x))
Inverse = Callable[[np.ndarray], np.ndarray]  # y -> f^{-1}(y)
InputStd = Callable[[np.ndarray], np.ndarray]  # y -> std of x given y, or None: sigma


def encode_elementwise(stack: Stack, x_k, forward: Elementwise, inverse: Inverse, *,
                       sigma: float, delta_in: float, delta_out: float,
                       input_std: Optional[InputStd] = None) -> np.ndarray:
  """x on the grid delta_in (int64, any shape) -> y on the grid delta_out (int64, same shape),
  coding x into ``stack`` at the cost of the layer's log-det. ``input_std(y)``, if given,
  replaces sigma as the std of x given y (a layer whose slope can fall so low that y's grid
  step, mapped back, is not small against sigma)."""
  x_k = np.asarray(x_k, np.int64)
  y, slope = forward(x_k * delta_in)
  y_k = stack.decode(np.asarray(y, np.float64) / delta_out,
                     sigma * np.abs(np.asarray(slope, np.float64)) / delta_out)
  x_mean = np.asarray(inverse(y_k * delta_out), np.float64)
  stack.encode(x_k, x_mean / delta_in, _input_std(y_k, delta_out, sigma, input_std) / delta_in,
               INPUT_RANGE)
  return y_k


def decode_elementwise(stack: Stack, y_k, forward: Elementwise, inverse: Inverse, *,
                       sigma: float, delta_in: float, delta_out: float,
                       input_std: Optional[InputStd] = None) -> np.ndarray:
  """Undoes ``encode_elementwise``: y (int64 on delta_out) -> x (int64 on delta_in)."""
  y_k = np.asarray(y_k, np.int64)
  x_mean = np.asarray(inverse(y_k * delta_out), np.float64)
  x_k = stack.decode(x_mean / delta_in, _input_std(y_k, delta_out, sigma, input_std) / delta_in,
                     INPUT_RANGE)
  y, slope = forward(x_k * delta_in)
  stack.encode(y_k, np.asarray(y, np.float64) / delta_out,
               sigma * np.abs(np.asarray(slope, np.float64)) / delta_out)
  return x_k


def _input_std(y_k, delta_out, sigma, input_std):
  if input_std is None:
    return np.full(y_k.shape, sigma)
  return np.asarray(input_std(y_k * delta_out), np.float64)


def _conditionals(weight: np.ndarray, sigma: float):
  """y = x W with x ~ N(x0, sigma^2 I) gives y ~ N(x0 W, sigma^2 W^T W). With W^T W = L L^T
  (Cholesky), channel i of y given channels < i has mean (x0 W)_i + sum_{j<i} L_ij z_j and std
  sigma L_ii, where z solves L z = (y - x0 W) / sigma. Returns (L, diag L)."""
  chol = np.linalg.cholesky(weight.T @ weight)
  return chol, np.diag(chol)


def _code_linear_output(stack: Stack, mean_y, weight, sigma, delta_out, y_k=None):
  """Pops (y_k None) or pushes (y_k given) y [..., C] on the grid delta_out under
  N(mean_y, sigma^2 W^T W) per position, channel by channel. Returns y_k.

  The conditional means come from the same forward substitution on both sides, one channel
  at a time, so that the decoder's means equal the encoder's bit for bit."""
  chol, diag = _conditionals(weight, sigma)
  c = weight.shape[0]
  popping = y_k is None
  out = np.empty(mean_y.shape, np.int64) if popping else np.asarray(y_k, np.int64)
  z = np.zeros(mean_y.shape, np.float64)
  means, stds = [], []
  for i in range(c):
    mean_i = mean_y[..., i] + sigma * (z[..., :i] @ chol[i, :i])
    std_i = np.full(mean_i.shape, sigma * diag[i] / delta_out)
    if popping:
      out[..., i] = stack.decode(mean_i / delta_out, std_i)
    z[..., i] = (out[..., i] * delta_out - mean_i) / (sigma * diag[i])
    means.append(mean_i)
    stds.append(std_i)
  if not popping:  # undo the pops: the last channel popped goes back first
    for i in reversed(range(c)):
      stack.encode(out[..., i], means[i] / delta_out, stds[i])
  return out


def encode_linear(stack: Stack, x_k, weight, *, sigma: float, delta_in: float,
                  delta_out: float) -> np.ndarray:
  """x [..., C] (int64 on delta_in) -> y = x W (int64 on delta_out), W float64 [C, C]
  invertible, coding x at the cost of -log2 |det W| per position."""
  x_k = np.asarray(x_k, np.int64)
  weight = np.asarray(weight, np.float64)
  y_k = _code_linear_output(stack, (x_k * delta_in) @ weight, weight, sigma, delta_out)
  x_mean = (y_k * delta_out) @ np.linalg.inv(weight)
  stack.encode(x_k, x_mean / delta_in, np.full(x_k.shape, sigma / delta_in), INPUT_RANGE)
  return y_k


def decode_linear(stack: Stack, y_k, weight, *, sigma: float, delta_in: float,
                  delta_out: float) -> np.ndarray:
  """Undoes ``encode_linear``: y (int64 on delta_out) -> x (int64 on delta_in)."""
  y_k = np.asarray(y_k, np.int64)
  weight = np.asarray(weight, np.float64)
  x_mean = (y_k * delta_out) @ np.linalg.inv(weight)
  x_k = stack.decode(x_mean / delta_in, np.full(y_k.shape, sigma / delta_in), INPUT_RANGE)
  _code_linear_output(stack, (x_k * delta_in) @ weight, weight, sigma, delta_out, y_k)
  return x_k
