"""Builds the flow stacks of the paper from a short layout string and a config.

A layout is a space-separated list of stages, read left to right in the forward direction:
- ``checkerN``: split the image into two halves (official column "checkerboard", or the true
  2-D checkerboard if ``checkerboard='2d'``), N coupling steps, merge;
- ``channelN``: the same with a channel split;
- ``s2d``: SpaceToDepth(2).
A coupling step is [Norm (or ActNorm), Pointwise (if enabled), coupling, TupleFlip], as in the
official launchers. For example the CIFAR-10 main flow is 'checker4 s2d channel2 checker3'.

The N steps of a stage share their shapes, so with ``scan=True`` they run as one ``nn.scan``
(CouplingSteps): their parameters are stacked on a leading [N] axis and XLA compiles one step
per stage, which keeps compile time flat in depth; ``scan=False`` unrolls them. ``remat``
recomputes each step's activations in the backward pass (jax.checkpoint) instead of storing
them: memory for compute (the figures: docs/training.md).
"""
import re
from typing import Any, List, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax import bijectors as bij
from flowpp_jax.bijectors.base import zero_log_det
from flowpp_jax.nn.conditioner import MIXERS, Conditioner

_STAGE = re.compile(r'^(checker|channel)([1-9][0-9]*)$|^s2d$')
COUPLINGS = ('mixlogistic', 'affine')
NORMS = ('norm', 'actnorm')
CHECKERBOARDS = ('columns', '2d')


def parse_layout(layout: str) -> List[tuple]:
  """'checker4 s2d channel2' -> [('checker', 4), ('s2d', 0), ('channel', 2)]."""
  stages = []
  for token in layout.split():
    match = _STAGE.match(token)
    if not match:
      raise ValueError(f'bad flow layout token {token!r} in {layout!r}: expected checkerN, '
                       'channelN or s2d')
    stages.append(('s2d', 0) if token == 's2d' else (match.group(1), int(match.group(2))))
  if not stages:
    raise ValueError('flow layout is empty')
  return stages


def make_split(kind: str, checkerboard: str):
  if kind == 'channel':
    return bij.ChannelSplit()
  return bij.Checkerboard2DSplit() if checkerboard == '2d' else bij.CheckerboardSplit()


def make_coupling(flow_cfg, *, dropout: float, dtype: Any, scan: bool = True,
                  one_block_attention: bool = False, name=None):
  """One coupling layer (with its own conditioner) from a flow config."""
  net = Conditioner(
      filters=flow_cfg.filters, blocks=flow_cfg.blocks, mixer=flow_cfg.mixer,
      heads=flow_cfg.heads, dropout=dropout, weight_norm=flow_cfg.weight_norm,
      out_concat_elu=flow_cfg.out_concat_elu, out_kernel=flow_cfg.out_kernel, dtype=dtype,
      scan=scan, one_block_attention=one_block_attention)
  if flow_cfg.coupling == 'affine':
    return bij.AffineCoupling(net, name=name)
  return bij.MixLogisticCoupling(net, flow_cfg.components, name=name)


class _ScannedStep(nn.Module):
  """One coupling step as an ``nn.scan`` body: ((x, log_det [B]), context) -> (carry, None).

  Direction and dropout are fields, not call arguments, so jax.checkpoint sees only arrays.
  """
  flow_cfg: Any
  norm: str
  dropout: float
  dtype: Any
  scan: bool
  one_block_attention: bool
  inverse: bool
  deterministic: bool

  def setup(self):
    layers = [(bij.ActNorm if self.norm == 'actnorm' else bij.Norm)(name='norm')]
    if self.flow_cfg.pointwise:
      layers.append(bij.Pointwise(name='pointwise'))
    self.layers = layers + [
        make_coupling(self.flow_cfg, dropout=self.dropout, dtype=self.dtype, scan=self.scan,
                      one_block_attention=self.one_block_attention, name='coupling'),
        bij.TupleFlip()]

  def __call__(self, carry, context):
    x, total = carry
    y, log_det = bij.run_chain(self.layers, x, context, inverse=self.inverse,
                               deterministic=self.deterministic)
    return (y, total + log_det), None


class CouplingSteps(bij.Bijector):
  """``count`` coupling steps [Norm, Pointwise?, coupling, TupleFlip] on a tuple (x1, x2) of
  [B, H, W, C] arrays, as one scan (inverse: the same scan in reverse).

  ``scan=True``: one nn.scan, parameters params['steps'][layer] with a leading [count] axis
  (step i uses index i), compiled once. ``scan=False``: params['step0'], ... unrolled, which
  XLA:CPU runs several times faster but compiles in time proportional to depth.
  """
  flow_cfg: Any
  count: int
  norm: str = 'norm'
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = True
  one_block_attention: bool = False  # backend.attention's one_block

  @nn.compact
  def __call__(self, x, context=None, *, inverse=False, deterministic=True):
    body = nn.remat(_ScannedStep, prevent_cse=not self.scan) if self.remat else _ScannedStep
    fields = (self.flow_cfg, self.norm, self.dropout, self.dtype, self.scan,
              self.one_block_attention, inverse, deterministic)
    carry = (x, zero_log_det(x))
    if not self.scan:
      steps = [body(*fields, name=f'step{i}') for i in range(self.count)]
      for step in (reversed(steps) if inverse else steps):
        carry, _ = step(carry, context)
      return carry
    scanned = nn.scan(body, variable_axes={'params': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                      length=self.count, reverse=inverse)
    carry, _ = scanned(*fields, name='steps')(carry, context)
    return carry


def build_layers(flow_cfg, *, checkerboard: str, norm: str, dropout: float,
                 dtype: Any = jnp.float32, remat: bool = False, scan: bool = True,
                 one_block_attention: bool = False, first: Sequence[Any] = (),
                 last: Sequence[Any] = ()) -> List[Any]:
  """The list of bijectors of one flow, in forward order, between ``first`` and ``last``."""
  layers = list(first)
  for kind, steps in parse_layout(flow_cfg.layout):
    if kind == 's2d':
      layers.append(bij.SpaceToDepth())
      continue
    layers.append(make_split(kind, checkerboard))
    layers.append(CouplingSteps(flow_cfg, steps, norm, dropout, dtype, remat, scan,
                                one_block_attention))
    layers.append(bij.Inverse(make_split(kind, checkerboard)))
  return layers + list(last)


def stage_shapes(layout: str, image_shape):
  """Yields (kind, [H, W, C] entering the stage) for each stage, then ('out', final shape).
  Each s2d halves H and W and quadruples C; splits and couplings keep the shape."""
  h, w, c = image_shape
  for kind, _ in parse_layout(layout):
    yield kind, (h, w, c)
    if kind == 's2d':
      h, w, c = h // 2, w // 2, 4 * c
  yield 'out', (h, w, c)


def output_shape(layout: str, image_shape) -> tuple:
  """[H, W, C] of a flow's output."""
  return list(stage_shapes(layout, image_shape))[-1][1]


def validate_flow_config(name: str, flow_cfg, image_shape) -> None:
  """Raises ValueError naming the field when a flow config cannot describe a valid flow."""
  for kind, (h, w, c) in stage_shapes(flow_cfg.layout, image_shape):
    if kind == 's2d' and (h % 2 or w % 2):
      raise ValueError(f'{name}.layout: s2d needs even height and width, got {h}x{w}')
    if kind == 'checker' and w % 2:
      raise ValueError(f'{name}.layout: a checkerboard split needs an even width, got {w}')
    if kind == 'channel' and c % 2:
      raise ValueError(f'{name}.layout: a channel split needs an even channel count, got {c}')
  if flow_cfg.coupling not in COUPLINGS:
    raise ValueError(f'{name}.coupling must be one of {COUPLINGS}, got {flow_cfg.coupling!r}')
  if flow_cfg.mixer not in MIXERS:
    raise ValueError(f'{name}.mixer must be one of {MIXERS}, got {flow_cfg.mixer!r}')
  for field in ('filters', 'blocks', 'components', 'heads'):
    if int(flow_cfg[field]) < 1:
      raise ValueError(f'{name}.{field} must be >= 1, got {flow_cfg[field]}')
  if flow_cfg.mixer == 'attention' and flow_cfg.filters % flow_cfg.heads:
    raise ValueError(f'{name}.filters ({flow_cfg.filters}) must be divisible by '
                     f'{name}.heads ({flow_cfg.heads})')
  if flow_cfg.out_kernel not in (1, 3):
    raise ValueError(f'{name}.out_kernel must be 1 or 3, got {flow_cfg.out_kernel}')


_UNROLLED_KEY = re.compile(r'^(step|block)([0-9]+)$')


def scanned_params(params):
  """Parameters of a ``scan_layers=False`` model -> the same model's ``scan_layers=True``
  layout: every run of siblings 'step0', 'step1', ... ('block0', ...) becomes one 'steps'
  ('blocks') subtree with their arrays stacked on a new leading axis. Other keys are kept."""
  if not isinstance(params, dict):
    return params
  out, runs = {}, {}
  for key, value in params.items():
    match = _UNROLLED_KEY.match(key)
    if match:
      runs.setdefault(match.group(1), {})[int(match.group(2))] = scanned_params(value)
    else:
      out[key] = scanned_params(value)
  for kind, items in runs.items():
    ordered = [items[i] for i in range(len(items))]
    # numpy trees stay on the host (an import stacks a whole checkpoint's arrays).
    stack = lambda *a: np.stack(a) if isinstance(a[0], np.ndarray) else jnp.stack(a)
    out[kind + 's'] = jax.tree_util.tree_map(stack, *ordered)
  return out


_SCANNED_KEY = {'steps': 'step', 'blocks': 'block'}


def unscanned_params(params):
  """The inverse of ``scanned_params``: each 'steps' ('blocks') subtree with a leading [N]
  axis becomes siblings 'step0' .. 'step{N-1}' ('block0', ...). Arrays stay numpy or jax as
  they came."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, value in params.items():
    if key not in _SCANNED_KEY:
      out[key] = unscanned_params(value)
      continue
    count = jax.tree_util.tree_leaves(value)[0].shape[0]
    for i in range(count):
      out[f'{_SCANNED_KEY[key]}{i}'] = unscanned_params(
          jax.tree_util.tree_map(lambda a, i=i: a[i], value))
  return out
