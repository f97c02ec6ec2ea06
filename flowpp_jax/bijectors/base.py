"""The bijector interface, and the Chain and Inverse combinators.

A bijector is a linen module whose ``__call__(x, context=None, *, inverse=False,
deterministic=True)`` returns ``(y, log_det)``: ``y`` the transformed value and ``log_det`` of
shape [B] holding log|det dy/dx| per example, in the direction that was run (so the inverse
returns the log-det of the inverse map, i.e. minus the forward one at the matching point).

A value ``x`` is either an array [B, ...] or, between a split and its merge, a tuple of two
arrays (x1, x2) of equal shape [B, H, W, C]. ``context`` is an optional [B, H, W, F] array for
conditional flows (the dequantizer). ``deterministic=False`` turns dropout on and needs a
'dropout' rng.

Data-dependent initialisation happens in ``init`` on the forward direction: layers such as
Norm read the statistics of the batch they are first called with.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from flowpp_jax.dtypes import at_least_float32


def first_part(x):
  """The array itself, or the first part of a tuple: what sets B and the dtype."""
  return x[0] if isinstance(x, tuple) else x


def sum_per_example(a):
  """[B, ...] -> [B]: sums every axis but the first."""
  return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def zero_log_det(x):
  first = first_part(x)
  return jnp.zeros((first.shape[0],), at_least_float32(first.dtype))


class Bijector(nn.Module):
  """Base class; subclasses implement __call__ as described in the module docstring."""


def run_chain(layers, x, context=None, *, inverse=False, deterministic=True):
  """Runs bijectors ``layers`` in order (reverse order if ``inverse``): (y, summed log_det)."""
  total = zero_log_det(x)
  for layer in (reversed(layers) if inverse else layers):
    x, log_det = layer(x, context, inverse=inverse, deterministic=deterministic)
    total = total + log_det
  return x, total


class Chain(Bijector):
  """Composition: forward runs ``layers`` in order, inverse in reverse order."""
  layers: Sequence[Any]

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    return run_chain(self.layers, x, context, inverse=inverse, deterministic=deterministic)


class Inverse(Bijector):
  """Swaps the directions of ``bijector``: Inverse(Split()) merges a tuple."""
  bijector: Any

  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    return self.bijector(x, context, inverse=not inverse, deterministic=deterministic)


class PartwiseBijector(Bijector):
  """A layer applied to an array, or to each part of a tuple with parameters of its own.

  Subclasses implement ``_part(index, x, inverse) -> (y, log_det)`` for one [B, H, W, C]
  array, with a log-det that is the same for every example (a scalar).
  """

  def _part(self, index, x, inverse):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    parts = x if isinstance(x, tuple) else (x,)
    outs, total = [], 0.0
    for i, part in enumerate(parts):
      out, log_det = self._part(i, part, inverse)
      outs.append(out)
      total = total + log_det
    total = jnp.full((parts[0].shape[0],), total, at_least_float32(parts[0].dtype))
    return (tuple(outs) if isinstance(x, tuple) else outs[0]), total
