"""``--mode=summary``: parameter counts of a config without allocating the model.

The variables come from ``jax.eval_shape`` of the data-dependent ``init``, so nothing is
computed or allocated; ImageNet32 (169M parameters) takes seconds on a CPU.
"""
import json
import math

import jax

from flowpp_jax import architecture
from flowpp_jax.bijectors import LogitPreprocess, Sigmoid
from flowpp_jax import model as model_lib


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _flow_rows(title, flow_params, layers):
  """Rows (name, kind, count) for the parameterised layers of one Chain; a stage of scanned
  coupling steps (parameters stacked on a leading [steps] axis) gives one row per step."""
  rows = []
  for i, layer in enumerate(layers):
    key = f'layers_{i}'
    if key not in flow_params:
      continue
    if not isinstance(layer, architecture.CouplingSteps):
      rows.append((f'{title}/{key}', type(layer).__name__, count(flow_params[key])))
      continue
    kinds = {'norm': 'ActNorm' if layer.norm == 'actnorm' else 'Norm', 'pointwise': 'Pointwise',
             'coupling': ('AffineCoupling' if layer.flow_cfg.coupling == 'affine'
                          else 'MixLogisticCoupling')}
    for j in range(layer.count):
      # Scanned steps hold every step's parameters stacked in 'steps'; unrolled, one 'stepJ'.
      step = flow_params[key].get(f'step{j}') or flow_params[key]['steps']
      share = 1 if f'step{j}' in flow_params[key] else layer.count
      rows += [(f'{title}/{key}/step{j}/{part}', kind, count(step[part]) // share)
               for part, kind in kinds.items() if part in step]
  return rows


def summary_rows(model_cfg):
  """(rows, totals): per-layer rows and a dict of totals for the whole model."""
  params = model_lib.abstract_params(model_cfg)
  kw = dict(checkerboard=model_cfg.checkerboard, norm=model_cfg.norm, dropout=0.0)
  main_layers = architecture.build_layers(model_cfg.main, first=[LogitPreprocess()], **kw)
  rows = _flow_rows('main_flow', params['main_flow'], main_layers)
  totals = {'main_flow': count(params['main_flow'])}
  dequant = params.get('dequantizer', {})
  if dequant:
    rows.append(('dequantizer/context', 'ContextNet', count(dequant['context'])))
    dq_layers = architecture.build_layers(model_cfg.dequant, last=[Sigmoid()], **kw)
    rows += _flow_rows('dequantizer/flow', dequant['flow'], dq_layers)
  totals['dequantizer'] = count(dequant)
  totals['num_params'] = totals['main_flow'] + totals['dequantizer']
  return rows, totals


def print_summary(model_cfg, print_fn=print):
  rows, totals = summary_rows(model_cfg)
  width = max(len(name) for name, _, _ in rows) + 2
  print_fn(f'{"layer":<{width}}{"type":<22}{"params":>14}')
  for name, kind, n in rows:
    print_fn(f'{name:<{width}}{kind:<22}{n:>14,}')
  print_fn('-' * (width + 36))
  couplings = [n for _, kind, n in rows if kind.endswith('Coupling')]
  print_fn(f'{"couplings":<{width}}{len(couplings):<22}{sum(couplings):>14,}')
  for key in ('main_flow', 'dequantizer', 'num_params'):
    print_fn(f'{key:<{width}}{"":<22}{totals[key]:>14,}')
  print_fn(json.dumps(totals))
  return totals
