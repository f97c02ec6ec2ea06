"""Local bits-back coding through a whole flow, one layer at a time, as the model runs it.

``coding(stack, sigma, delta)`` is a context manager under which every call of a coded layer
(``CODED``: logit preprocessing, Norm, ActNorm, Pointwise, the couplings, Sigmoid) codes its
value on ``stack`` instead of computing it:
- a forward call, whose input x is known, pops its output y under N(f(x), sigma^2 J J^T),
  pushes x under N(f^{-1}(y), sigma^2 I), and returns y;
- an inverse call, whose output y is known, pops x under N(f^{-1}(y), sigma^2 I), pushes y
  under N(f(x), sigma^2 J J^T), and returns x.
(sigma is the layer's own: ``layer_sigma``.)
So running a flow forward under ``coding`` codes its input at the cost of -log2 |det J| (plus
the grids' terms), and running it inverse undoes exactly that. Splits, squeezes and flips are
permutations of grid values and run as they are. Every value that passes between layers is on
one grid of step ``delta`` (a power of two) and travels as VALUE_DTYPE, float64 (x64 is on
within ``coding``), which holds it exactly; ``to_grid`` refuses |value| >= 2^24 delta. The
layers' own arithmetic (conditioners, mixture CDFs, their Newton inverse) runs as in the model,
in float64 for float64 inputs; two machines may differ in its last bits, which the coder's
snapping absorbs (``coder``).

The model must be built with ``scan_layers=False`` and ``remat=False``: inside a scan the
layers see traced values, which cannot be coded. It must run eagerly (not under jit).
"""
import contextlib
import dataclasses
import time
from typing import List, Optional, Tuple

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


VALUE_DTYPE = jnp.float64  # the values the coded layers compute on (the module's docstring)


class GridError(ValueError):
  """A value between layers is too large for its grid (|value| < 2^24 delta)."""


def to_grid(value, delta) -> np.ndarray:
  """Float values on the grid of step delta -> their int64 grid indices; GridError if some
  value is not finite or not below 2^24 delta in magnitude."""
  value = np.asarray(value, np.float64)
  if not np.all(np.abs(value) < (1 << 24) * delta):
    raise GridError(f'a value of {float(np.max(np.abs(value))):.4g} between two layers does '
                    f'not fit the coding grid (|value| < {(1 << 24) * delta:g})')
  return np.round(value / delta).astype(np.int64)


def from_grid(k, delta):
  """int64 grid indices -> VALUE_DTYPE values (exact; call it with x64 on, as ``coding``
  is)."""
  return jnp.asarray(np.asarray(k, np.float64) * delta, VALUE_DTYPE)


# A Sigmoid's output (the dequantizer's u) must stay inside (0, 1) on its grid, so that x + u
# stays in x's bin: its Gaussians' means are held EDGE_STEPS grid steps inside. With sigma <=
# MAX_SIGMA no value is then popped outside: a Gaussian's std is at most sigma times the
# distance to the edge in steps (or 1/16 step), and it is cut under 2 (RANGE std + 1) steps
# from its mean. A u popped within EDGE_STEPS + 4 steps of an edge may come from any input
# beyond logit(EDGE_STEPS * delta) (-7.6 for 2^-14 steps): the input is pushed back under
# EDGE_STD there (inputs out to about +-48 fit its range). MAX_SIGMA bounds the Sigmoid's own
# sigma (``layer_sigma``).
EDGE_STEPS = 16
EDGE_STD = 4.0
MAX_SIGMA = 1.0 / 32


SIGMOID_SLOPE = 0.25  # the Sigmoid's slope at its centre, u = 1/2


def layer_sigma(module, sigma: float) -> float:
  """The std of a layer's input Gaussians: ``sigma`` in the units of its output at its centre.
  Logit preprocessing (pixels to logits, slope at least 4 (1 - 2 alpha) / num_levels) and the
  Sigmoid (slope at most 1/4) change units; with sigma in their inputs' units their outputs'
  Gaussians would be a grid step or less wide (0.25% of CIFAR-10's bits for the logit
  layer). The other layers keep their values near unit scale and take sigma."""
  if isinstance(module, bij.LogitPreprocess):
    return sigma * module.num_levels / (4 * (1 - 2 * module.alpha))
  if isinstance(module, bij.Sigmoid):
    return sigma / SIGMOID_SLOPE
  return sigma


def _sigmoid_input_std(sigma, delta):
  """The std of a Sigmoid's input given its output u: sigma, widened by up to a grid step of
  u mapped back through the slope u (1 - u), which is small near 0 and 1; EDGE_STD at the
  edges."""
  def std(u):
    steps = np.minimum(u, 1 - u) / delta
    narrow = np.sqrt(sigma ** 2 + delta ** 2 / (3 * np.square(u * (1 - u))))
    return np.where(steps <= EDGE_STEPS + 4, EDGE_STD, narrow)
  return std


class Programs:
  """The jitted programs of the layers' coding, kept across ``coding`` blocks (encoder and
  decoder each run the same programs). Layers of one configuration share their programs: the
  weights are arguments, so each distinct layer is traced and compiled once per input shape,
  however often the flow repeats it."""

  def __init__(self, rows: Optional[int] = None):
    self._programs = {}
    self.rows = rows  # the batch size: smaller batches are padded to it (``padded``)

  @staticmethod
  def _key(module, *rest):
    # A module's repr lists its attributes (its submodules' included), not its name or place.
    return (type(module).__name__, repr(module.clone(parent=None)), *rest)

  def get(self, module, tuple_input: bool, delta: float):
    """(prepare, forward, inverse) of ``module``'s coded parts; see _build."""
    key = self._key(module, tuple_input, delta)
    if key not in self._programs:
      self._programs[key] = _build(module.clone(parent=None), tuple_input, delta)
    return self._programs[key]

  def log_det(self, module, tuple_input: bool):
    """The layer's own jitted log |det J| [B] at its input, as the model computes it (for the
    ledger)."""
    key = self._key(module, tuple_input, 'log_det')
    if key not in self._programs:
      free = module.clone(parent=None)
      self._programs[key] = jax.jit(
          lambda variables, x, context: free.apply(variables, x, context)[1])
    return self._programs[key]


def padded(tree, rows: Optional[int]):
  """The arrays of ``tree`` with their first axis [n, ...] grown to [rows, ...] by repeating
  their last row (valid values for any layer), on the host: a batch smaller than ``rows``
  runs the programs compiled for ``rows`` instead of compiling its own."""
  def pad(a):
    if rows is None or a.shape[0] >= rows:
      return a  # as it is: a full batch's arrays stay on the device
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], rows - a.shape[0], axis=0)])
  return jax.tree_util.tree_map(pad, tree)


def first_rows(tree, n: int):
  """The first ``n`` rows of the arrays of ``tree`` (undoes ``padded``), on the host."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], tree)


def _split(coupling, x) -> Tuple[tuple, tuple]:
  """(parts that pass unchanged, parts that are coded): x1 of a coupling passes."""
  if coupling:
    return (x[0],), (x[1],)
  return (), (x if isinstance(x, tuple) else (x,))


def _join(coupling, tuple_input, kept, coded):
  if coupling:
    return (kept[0], coded[0])
  return tuple(coded) if tuple_input else coded[0]


def _build(free, tuple_input, delta):
  """Jitted programs of a layer (a module without parent) on its coded parts, the other parts
  held at ``kept``: prepare(variables, kept, context) -> what the layer's map depends on
  (a coupling's elementwise parameters, computed once per call: its conditioner is most of
  its cost), then forward(prepared, coded) -> (f of them, f's elementwise slopes) and
  inverse(prepared, coded) -> f^{-1} of them."""
  if isinstance(free, _COUPLINGS):
    prepare = jax.jit(lambda variables, kept, context: free.apply(
        variables, kept[0], context, dtype=kept[0].dtype, method='elementwise_params'))

    def through(params, inverse):
      # The coder's inverse needs the same bits on both sides, not the last ulp.
      return lambda x2: (free.transform(x2, params, inverse, exact=False),)
  else:
    def prepare(variables, kept, context):
      return variables, kept, context

    def through(prepared, inverse):
      variables, kept, context = prepared
      return lambda *coded: _split(False, free.apply(
          variables, _join(False, tuple_input, kept, coded), context, inverse=inverse)[0])[1]

  def forward(prepared, coded):
    # The layer is elementwise in its coded parts, so J^T 1 (one pullback of ones) is J's
    # diagonal.
    outs, pull = jax.vjp(through(prepared, False), *coded)
    slopes = pull(tuple(jnp.ones_like(o) for o in outs))
    if isinstance(free, bij.Sigmoid):
      edge = EDGE_STEPS * delta
      outs = tuple(jnp.clip(o, edge, 1.0 - edge) for o in outs)
    return outs, slopes

  def inverse(prepared, coded):
    return through(prepared, True)(*coded)

  return prepare, jax.jit(forward), jax.jit(inverse)


@dataclasses.dataclass
class LayerCall:
  """What one coded layer call did, for accounting (``coding``'s ``ledger``): the layer's type
  and path, its direction, the bits it added to the stack (negative for an inverse call), its
  log2 |det J| summed over the batch at the input it coded (the layer's own), and its seconds
  (the coding, not the log-det), of which a coupling's conditioner took ``prepare_seconds``."""
  layer: str
  path: str
  inverse: bool
  bits: int
  log2_det: float
  seconds: float
  prepare_seconds: float = 0.0


def _code(module, programs: Programs, stack: Stack, value, layer_context, sigma, delta,
          inverse: bool, ledger: Optional[List[LayerCall]] = None):
  """One call of ``module`` under coding: ``value`` is its input (forward) or its output
  (inverse); returns the other side, on the grid. Appends a LayerCall to ``ledger`` if
  given."""
  start, bits, prepare_seconds = time.perf_counter(), stack.num_bits(), 0.0
  coupling = isinstance(module, _COUPLINGS)
  tuple_input = isinstance(value, tuple)
  kept, coded = _split(coupling, value)
  known = [to_grid(p, delta) for p in coded]
  sigma = layer_sigma(module, sigma)
  if isinstance(module, bij.Pointwise):
    step = lbb.decode_linear if inverse else lbb.encode_linear
    weights = [np.asarray(module.variables['params'][f'W{i}'], np.float64)
               for i in range(len(known))]
    other = [None] * len(known)
    # The inverse undoes the forward's parts last-first, as the stack needs.
    for i in (reversed(range(len(known))) if inverse else range(len(known))):
      other[i] = step(stack, known[i], weights[i], sigma=sigma, delta_in=delta,
                      delta_out=delta)
  else:
    input_std = None
    if isinstance(module, bij.Sigmoid):
      input_std = _sigmoid_input_std(sigma, delta)
    prepare, forward, backward = programs.get(module, tuple_input, delta)
    pad = lambda tree: padded(tree, programs.rows)
    count = known[0].shape[0]
    prepare_start = time.perf_counter()
    prepared = prepare(module.variables, pad(kept), pad(layer_context))
    if ledger is not None:
      jax.block_until_ready(prepared)  # dispatch is asynchronous: time the conditioner itself
      prepare_seconds = time.perf_counter() - prepare_start
    other = _elementwise(stack, known, lambda c: first_rows(forward(prepared, pad(c)), count),
                         lambda c: first_rows(backward(prepared, pad(c)), count), sigma, delta,
                         input_std, encode=not inverse)
  result = _join(coupling, tuple_input, kept, tuple(from_grid(k, delta) for k in other))
  if ledger is not None:
    seconds = time.perf_counter() - start
    # At the input in VALUE_DTYPE, whatever the caller passed, so that both directions
    # evaluate the same values.
    on_grid = lambda parts: tuple(from_grid(to_grid(p, delta), delta) for p in parts)
    layer_input = _split(coupling, result if inverse else value)
    log_det = programs.log_det(module, tuple_input)(
        module.variables, _join(coupling, tuple_input, *map(on_grid, layer_input)),
        layer_context)
    ledger.append(LayerCall(type(module).__name__, '/'.join(module.scope.path), inverse,
                            stack.num_bits() - bits,
                            float(np.sum(np.asarray(log_det, np.float64))) / np.log(2),
                            seconds, prepare_seconds))
  return result


def _elementwise(stack, k_parts, with_slopes, inverse_of, sigma, delta, input_std, *,
                 encode):
  """The coded parts of an elementwise layer (grid int64 arrays), coded as one array through
  ``lbb``: its forward step (encode) or inverse step."""
  shapes = [k.shape for k in k_parts]
  sizes = np.cumsum([0] + [k.size for k in k_parts])
  flat = lambda parts: np.concatenate([np.asarray(p, np.float64).ravel() for p in parts])
  unflat = lambda v: tuple(v[a:b].reshape(s) for a, b, s in zip(sizes[:-1], sizes[1:], shapes))

  def forward(v):
    outs, slopes = with_slopes(unflat(v))
    return flat(outs), flat(slopes)

  def inverse(v):
    return flat(inverse_of(unflat(v)))

  step = lbb.encode_elementwise if encode else lbb.decode_elementwise
  out = step(stack, np.concatenate([k.ravel() for k in k_parts]), forward, inverse,
             sigma=sigma, delta_in=delta, delta_out=delta, input_std=input_std)
  return [out[a:b].reshape(s) for a, b, s in zip(sizes[:-1], sizes[1:], shapes)]


@contextlib.contextmanager
def coding(stack: Stack, sigma: float, delta: float, programs: Optional[Programs] = None,
           ledger: Optional[List[LayerCall]] = None):
  """Within it, the coded layers of any flax flow code on ``stack`` (see the module's
  docstring); ``sigma`` is the local Gaussians' scale and ``delta`` the grid step. Pass the
  same ``programs`` to later blocks to reuse their compiled layers, and a list as ``ledger``
  to get a LayerCall of every coded call appended to it."""
  if not sigma <= MAX_SIGMA * SIGMOID_SLOPE:
    raise ValueError(f'sigma must be <= {MAX_SIGMA * SIGMOID_SLOPE}, got {sigma}')
  programs = Programs() if programs is None else programs
  busy = [False]  # the layer's own calls inside the coding run as they are

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if busy[0] or context.method_name != '__call__' or not isinstance(module, CODED):
      return next_fun(*args, **kwargs)
    value = args[0]
    layer_context = args[1] if len(args) > 1 else kwargs.get('context')
    busy[0] = True
    try:
      out = _code(module, programs, stack, value, layer_context, sigma, delta,
                  bool(kwargs.get('inverse', False)), ledger)
    finally:
      busy[0] = False
    first = out[0] if isinstance(out, tuple) else out
    return out, jnp.zeros((first.shape[0],), first.dtype)

  with nn.intercept_methods(interceptor), jax.enable_x64(True):  # VALUE_DTYPE is float64
    yield
