"""Local bits-back coding through a whole flow, one layer at a time, as the model runs it.

``coding(stack, sigma, delta)`` is a context manager under which every call of a coded layer
(``CODED``: logit preprocessing, Norm, ActNorm, Pointwise, the couplings, Sigmoid) codes its
value on ``stack`` instead of computing it:
- a forward call, whose input x is known, pops its output y under N(f(x), sigma^2 J J^T),
  pushes x under N(f^{-1}(y), sigma^2 I), and returns y;
- an inverse call, whose output y is known, pops x under N(f^{-1}(y), sigma^2 I), pushes y
  under N(f(x), sigma^2 J J^T), and returns x.
So running a flow forward under ``coding`` codes its input at the cost of -log2 |det J| (plus
the grids' terms), and running it inverse undoes exactly that. Splits, squeezes and flips are
permutations of grid values and run as they are. Every value that passes between layers is on
one grid of step ``delta`` (a power of two) and travels as float32, which holds it exactly while
|value| < 2^24 delta; the layers' own arithmetic (conditioners, mixture CDFs, their bisection)
runs as in the model, and both sides run it on the same inputs, so they agree bit for bit.

The model must be built with ``scan_layers=False`` and ``remat=False``: inside a scan the
layers see traced values, which cannot be coded. It must run eagerly (not under jit).
"""
import contextlib
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax import bijectors as bij
from flowpp_jax.compression import lbb
from flowpp_jax.compression.coder import Stack

CODED = (bij.LogitPreprocess, bij.Norm, bij.ActNorm, bij.Pointwise, bij.MixLogisticCoupling,
         bij.AffineCoupling, bij.Sigmoid)
_COUPLINGS = (bij.MixLogisticCoupling, bij.AffineCoupling)


class GridError(ValueError):
  """A value between layers is too large for its grid to travel exactly as float32."""


def _to_grid(value, delta) -> np.ndarray:
  k = np.round(np.asarray(value, np.float64) / delta).astype(np.int64)
  if np.any(np.abs(k) >= 1 << 24):
    raise GridError(f'a value of {float(np.max(np.abs(value))):.4g} between two layers does '
                    f'not fit the coding grid (|value| < {(1 << 24) * delta:g})')
  return k


def _from_grid(k, delta):
  return jnp.asarray(np.asarray(k, np.float64) * delta, jnp.float32)


class _LayerCoder:
  """The coding of one call of one layer: its parts, f, f's slopes and f^{-1} on them."""

  def __init__(self, module, context):
    self.free = module.clone(parent=None)
    self.variables = module.variables
    self.context = context
    self.coupling = isinstance(module, _COUPLINGS)
    self.linear = isinstance(module, bij.Pointwise)

  def _call(self, x, inverse):
    return self.free.apply(self.variables, x, self.context, inverse=inverse)[0]

  def split(self, x) -> Tuple[tuple, tuple]:
    """(parts that pass unchanged, parts that are coded): x1 of a coupling passes."""
    if self.coupling:
      return (x[0],), (x[1],)
    return (), (x if isinstance(x, tuple) else (x,))

  def join(self, kept, coded, like):
    if self.coupling:
      return (kept[0], coded[0])
    return tuple(coded) if isinstance(like, tuple) else coded[0]

  def weights(self, count):
    """Pointwise's matrices W0 .. W{count-1}, one per part, float64."""
    return [np.asarray(self.variables['params'][f'W{i}'], np.float64) for i in range(count)]

  def through(self, like, kept, inverse):
    """The layer on its coded parts (a tuple), the other parts held at ``kept``."""
    def run(*parts):
      return self.split(self._call(self.join(kept, parts, like), inverse))[1]
    return run

  def with_slopes(self, like, kept):
    """coded parts -> (f of them, f's elementwise slopes). The layer is elementwise in its
    coded parts, so J^T 1 (one pullback of ones) is J's diagonal."""
    run = self.through(like, kept, False)

    def value_and_slope(coded):
      outs, pull = jax.vjp(run, *coded)
      return outs, pull(tuple(jnp.ones_like(o) for o in outs))
    return value_and_slope


def _code(coder: _LayerCoder, stack: Stack, value, sigma, delta, inverse: bool):
  """One layer call under coding: ``value`` is its input (forward) or its output (inverse);
  returns the other side, on the grid."""
  kept, coded = coder.split(value)
  known = [_to_grid(p, delta) for p in coded]
  if coder.linear:
    step = lbb.decode_linear if inverse else lbb.encode_linear
    weights = coder.weights(len(known))
    other = [None] * len(known)
    # The inverse undoes the forward's parts last-first, as the stack needs.
    for i in (reversed(range(len(known))) if inverse else range(len(known))):
      other[i] = step(stack, known[i], weights[i], sigma=sigma, delta_in=delta,
                      delta_out=delta)
  else:
    other = _elementwise(stack, known, coder.with_slopes(value, kept),
                         coder.through(value, kept, True), sigma, delta, encode=not inverse)
  return coder.join(kept, tuple(_from_grid(k, delta) for k in other), value)


def _elementwise(stack, k_parts, with_slopes, inverse_of, sigma, delta, *, encode):
  """The coded parts of an elementwise layer (grid int64 arrays), coded as one array through
  ``lbb``: its forward step (encode) or inverse step."""
  shapes = [k.shape for k in k_parts]
  sizes = np.cumsum([0] + [k.size for k in k_parts])
  flat = lambda parts: np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])
  unflat = lambda v: tuple(jnp.asarray(v[a:b].reshape(s), jnp.float32)
                           for a, b, s in zip(sizes[:-1], sizes[1:], shapes))

  def forward(v):
    outs, slopes = with_slopes(unflat(v))
    return flat(outs), flat(slopes)

  def inverse(v):
    return flat(inverse_of(*unflat(v)))

  step = lbb.encode_elementwise if encode else lbb.decode_elementwise
  out = step(stack, np.concatenate([k.ravel() for k in k_parts]), forward, inverse,
             sigma=sigma, delta_in=delta, delta_out=delta)
  return [out[a:b].reshape(s) for a, b, s in zip(sizes[:-1], sizes[1:], shapes)]


@contextlib.contextmanager
def coding(stack: Stack, sigma: float, delta: float):
  """Within it, the coded layers of any flax flow code on ``stack`` (see the module's
  docstring); ``sigma`` is the local Gaussians' scale and ``delta`` the grid step."""
  busy = [False]  # the layer's own calls inside the coding run as they are

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if busy[0] or context.method_name != '__call__' or not isinstance(module, CODED):
      return next_fun(*args, **kwargs)
    value = args[0]
    layer_context = args[1] if len(args) > 1 else kwargs.get('context')
    busy[0] = True
    try:
      coder = _LayerCoder(module, layer_context)
      out = _code(coder, stack, value, sigma, delta, bool(kwargs.get('inverse', False)))
    finally:
      busy[0] = False
    first = out[0] if isinstance(out, tuple) else out
    return out, jnp.zeros((first.shape[0],), jnp.float32)

  with nn.intercept_methods(interceptor):
    yield
