"""The official TensorFlow code's variable names for our parameter tree, both ways.

The authors' code (aravindsrinivas/flowpp) names each variable after the ``tf.make_template``
that created it. Templates are numbered per kind in the order of their first call ('Norm',
'Norm_1', ..., 'Pointwise_k', 'MixLogisticAttnCoupling_k'), and the dequantizer runs before
the main flow, so its coupling steps take the first numbers; the context network is
'context_proc'. Inside a template the names follow the layers: 'block{j}/conv/c1/W',
'block{j}/ln1/g', 'block{j}/attn/proj1/W', ... Two families differ:
- CIFAR-10 (flows/): coupling input and output convs 'proj_in' and 'proj_out', layer norms
  stored as [1, 1, 1, F];
- ImageNet (flows_imagenet/, our configs with ``out_concat_elu``): 'c1' and 'c2', layer norms
  [F].
Our tree maps onto these one to one, in the unrolled layout (``model.scan_layers=False``;
architecture.scanned_params stacks it). Only the layer norms' names (scale, bias -> g, b) and
the CIFAR shapes differ.
"""
import collections
import re
from typing import Dict, List, Tuple

import numpy as np

Path = Tuple[str, ...]
_NUMBERED = re.compile(r'^([a-z_]+?)_?([0-9]+)$')


def _natural(key: str):
  """'layers_10' sorts after 'layers_9', 'step10' after 'step9'."""
  match = _NUMBERED.match(key)
  return (match.group(1), int(match.group(2))) if match else (key, -1)


def _sorted_items(tree: dict):
  return sorted(tree.items(), key=lambda item: _natural(item[0]))


def _leaves(tree, prefix: Path = ()) -> List[Tuple[Path, object]]:
  """(path, leaf) pairs below ``tree`` in natural key order."""
  if not isinstance(tree, dict):
    return [(prefix, tree)]
  return [pair for key, value in _sorted_items(tree) for pair in _leaves(value, prefix + (key,))]


def imagenet_family(model_cfg) -> bool:
  """Whether the official names are those of the ImageNet launchers (c1/c2, [F] layer norms):
  the configs whose output projection starts with a concat-ELU."""
  return bool(model_cfg.main.out_concat_elu)


def coupling_template(flow_cfg) -> str:
  """The official class (and template) name of one flow's couplings."""
  if flow_cfg.coupling == 'affine':
    return 'AffineAttnCoupling'  # flows/ablations/abl_nomixlog.py
  # The no-attention ablation and ImageNet 64's dequantizer call theirs MixLogisticCoupling.
  return 'MixLogisticAttnCoupling' if flow_cfg.mixer == 'attention' else 'MixLogisticCoupling'


def _layer_norm_leaf(leaf: str) -> str:
  return {'scale': 'g', 'bias': 'b'}[leaf]


def _coupling_name(scope: str, path: Path, imagenet: bool) -> str:
  """('net', 'stack', 'block0', 'conv', 'c1', 'W') -> 'SCOPE/block0/conv/c1/W'."""
  renames = {'proj_in': 'c1' if imagenet else 'proj_in',
             'proj_out': 'c2' if imagenet else 'proj_out', 'maxout': 'attn'}
  parts = [renames.get(p, p) for p in path if p not in ('net', 'stack')]
  if len(parts) >= 2 and parts[-2] in ('ln1', 'ln2'):
    parts[-1] = _layer_norm_leaf(parts[-1])
  return '/'.join([scope] + parts)


def _context_name(path: Path) -> str:
  """Our ContextNet path -> its name under 'context_proc' (block i: c{i}, dqln{i}, dqattn{i},
  ln{i}; the position embedding is 'pos_emb_dq')."""
  if path == ('pos_emb',):
    return 'context_proc/pos_emb_dq'
  if path[0] != 'stack':
    return '/'.join(('context_proc',) + path)
  block = path[1][len('block'):]
  layer, rest = path[2], list(path[3:])
  scope = {'conv': 'c', 'ln1': 'dqln', 'attn': 'dqattn', 'maxout': 'dqattn', 'ln2': 'ln'}[layer]
  if layer in ('ln1', 'ln2'):
    rest[-1] = _layer_norm_leaf(rest[-1])
  return '/'.join(['context_proc', scope + block] + rest)


class NameMap:
  """The official name of every leaf of one config's unrolled parameter tree.

  ``entries``: (our path, official name, official shape) in the order the official graph
  creates the variables; ``shapes`` gives our shape of each path.
  """

  def __init__(self, model_cfg, unrolled_params):
    """unrolled_params: the tree of a ``scan_layers=False`` model (arrays or shape structs)."""
    self.imagenet = imagenet_family(model_cfg)
    counters = collections.Counter()

    def template(kind: str) -> str:
      n = counters[kind]
      counters[kind] += 1
      return kind if n == 0 else f'{kind}_{n}'

    self.entries: List[Tuple[Path, str, tuple]] = []
    self.shapes: Dict[Path, tuple] = {}

    def add(path: Path, name: str, leaf) -> None:
      shape = tuple(leaf.shape)
      layer_norm = name.split('/')[-2].startswith(('ln', 'dqln'))
      official_shape = (1, 1, 1) + shape if layer_norm and not self.imagenet else shape
      self.entries.append((path, name, official_shape))
      self.shapes[path] = shape

    flows = []
    if 'dequantizer' in unrolled_params:
      dequant = unrolled_params['dequantizer']
      for path, leaf in _leaves(dequant['context']):
        add(('dequantizer', 'context') + path, _context_name(path), leaf)
      flows.append((('dequantizer', 'flow'), dequant['flow'], model_cfg.dequant))
    flows.append((('main_flow',), unrolled_params['main_flow'], model_cfg.main))
    for prefix, flow, flow_cfg in flows:
      kind = coupling_template(flow_cfg)
      for stage, steps in _sorted_items(flow):
        for step, layers in _sorted_items(steps):
          base = prefix + (stage, step)
          for layer, sub in (('norm', 'Norm'), ('pointwise', 'Pointwise')):
            if layer in layers:
              scope = template(sub)
              for path, leaf in _leaves(layers[layer]):
                part = path[0][-1]  # g0 / b1 / W0: the half of the tuple
                leaf_name = (f'norm{part}/{path[0][:-1]}' if layer == 'norm' else path[0])
                add(base + (layer,) + path, f'{scope}/{leaf_name}', leaf)
          scope = template(kind)
          for path, leaf in _leaves(layers['coupling']):
            add(base + ('coupling',) + path, _coupling_name(scope, path, self.imagenet), leaf)

  @property
  def names(self) -> List[str]:
    return [name for _, name, _ in self.entries]

  def to_official(self, unrolled_values) -> Dict[str, np.ndarray]:
    """Our unrolled tree of arrays -> {official name: float32 array in the official shape}."""
    out = {}
    for path, name, shape in self.entries:
      value = unrolled_values
      for key in path:
        value = value[key]
      out[name] = np.asarray(value, np.float32).reshape(shape)
    return out

  def from_official(self, arrays: Dict[str, np.ndarray]) -> dict:
    """{official name: array} (every name of ``names``, official shapes) -> our unrolled tree
    of float32 arrays. Shapes must already have been checked (see check_shapes)."""
    tree: dict = {}
    for path, name, _ in self.entries:
      node = tree
      for key in path[:-1]:
        node = node.setdefault(key, {})
      node[path[-1]] = np.asarray(arrays[name], np.float32).reshape(self.shapes[path])
    return tree

  def shape_errors(self, arrays: Dict[str, np.ndarray]) -> List[Tuple[str, tuple, tuple]]:
    """(name, shape in the file, shape the config needs) for each array that does not fit."""
    return [(name, tuple(np.shape(arrays[name])), shape) for _, name, shape in self.entries
            if tuple(np.shape(arrays[name])) != shape]
