"""Builds the flow stacks of the paper from a short layout string and a config.

A layout is a space-separated list of stages, read left to right in the forward direction:
- ``checkerN``: split the image into two halves (official column "checkerboard", or the true
  2-D checkerboard if ``checkerboard='2d'``), N coupling steps, merge;
- ``channelN``: the same with a channel split;
- ``s2d``: SpaceToDepth(2).
A coupling step is [Norm (or ActNorm), Pointwise (if enabled), coupling, TupleFlip], as in the
official launchers. For example the CIFAR-10 main flow is 'checker4 s2d channel2 checker3'.
"""
import re
from typing import Any, List, Sequence

import jax.numpy as jnp

from flowpp_jax import bijectors as bij
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


def make_coupling(flow_cfg, *, dropout: float, dtype: Any):
  """One coupling layer (with its own conditioner) from a flow config."""
  net = Conditioner(
      filters=flow_cfg.filters, blocks=flow_cfg.blocks, mixer=flow_cfg.mixer,
      heads=flow_cfg.heads, dropout=dropout, weight_norm=flow_cfg.weight_norm,
      out_concat_elu=flow_cfg.out_concat_elu, out_kernel=flow_cfg.out_kernel, dtype=dtype)
  if flow_cfg.coupling == 'affine':
    return bij.AffineCoupling(net)
  return bij.MixLogisticCoupling(net, flow_cfg.components)


def build_layers(flow_cfg, *, checkerboard: str, norm: str, dropout: float,
                 dtype: Any = jnp.float32, first: Sequence[Any] = (),
                 last: Sequence[Any] = ()) -> List[Any]:
  """The list of bijectors of one flow, in forward order, between ``first`` and ``last``."""
  layers = list(first)
  norm_cls = bij.ActNorm if norm == 'actnorm' else bij.Norm
  for kind, steps in parse_layout(flow_cfg.layout):
    if kind == 's2d':
      layers.append(bij.SpaceToDepth())
      continue
    layers.append(make_split(kind, checkerboard))
    for _ in range(steps):
      layers.append(norm_cls())
      if flow_cfg.pointwise:
        layers.append(bij.Pointwise())
      layers.append(make_coupling(flow_cfg, dropout=dropout, dtype=dtype))
      layers.append(bij.TupleFlip())
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
