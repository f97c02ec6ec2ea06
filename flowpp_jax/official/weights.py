"""The authors' trained Flow++ weights read into a flowpp_jax workdir, and written back.

Reads (``read_weights``):
- an .npz of the official TensorFlow variable names, as the authors' local bits-back
  repository (hojonathanho/localbitsback) distributes their models: CIFAR-10's keyed by the
  names, ImageNet 32's and 64's by NAME/ExponentialMovingAverage alone;
- a checkpoint of the official trainer, by its prefix (.../checkpoints/model-400000) or its
  folder (the newest one is read). Reading it needs TensorFlow: pip install -e '.[prepare]'.

``import_weights`` writes an ordinary workdir: checkpoints/<step>/, config.json and
imported_weights.json (where the weights came from, and which values were used). Parameters
come from the raw values and the EMA from ``NAME/ExponentialMovingAverage`` where the file has
averages (a file with none gives both the same values, and so does a file of averages alone);
Adam's moments and step count from ``NAME/Adam``, ``NAME/Adam_1`` and ``beta1_power`` where
present, otherwise fresh. ``export_weights`` writes a workdir's latest EMA parameters as an
.npz of official names and shapes, keyed as the authors' loader for the architecture reads
them. Bad input raises ValueError and writes nothing. The command:
flowpp_jax/import_weights.py.
"""
import datetime
import hashlib
import json
import math
import os
import pathlib
import re
import zipfile
from typing import Dict

import jax
import ml_collections
import numpy as np

import flowpp_jax
from flowpp_jax import architecture, config_defaults
from flowpp_jax import model as model_lib
from flowpp_jax.official import names as official_names
from flowpp_jax.runtime import fileio
from flowpp_jax.trainer import experiment, optim, steps

RECORD_FILE = 'imported_weights.json'
EMA_SUFFIX = '/ExponentialMovingAverage'
# How a file keys its variables: under their names (the authors' CIFAR-10 file, the official
# trainer's checkpoints, which add averages and Adam slots), or as NAME/ExponentialMovingAverage
# alone (the authors' ImageNet 32 and 64 files).
LAYOUT_PLAIN, LAYOUT_AVERAGES = 'plain', 'averages'

ADAM_SUFFIXES = ('/Adam', '/Adam_1')  # first and second moments
_CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / 'configs'
_PAPER_CONFIGS = ('cifar10', 'imagenet32', 'imagenet64', 'cifar10_affine',
                  'cifar10_no_attention', 'cifar10_uniform_dequant')


# Tracing a full-size model's init takes seconds (12 for ImageNet 32): once per config.
_NAME_MAPS: Dict[str, official_names.NameMap] = {}


def name_map(model_cfg) -> official_names.NameMap:
  """The official names of ``model_cfg``'s parameters (of its unrolled layout)."""
  unrolled = ml_collections.ConfigDict(model_cfg.to_dict())
  unrolled.scan_layers = False
  key = unrolled.to_json_best_effort(sort_keys=True)
  if key not in _NAME_MAPS:
    _NAME_MAPS[key] = official_names.NameMap(unrolled, model_lib.abstract_params(unrolled))
  return _NAME_MAPS[key]


def _to_layout(unrolled_tree, model_cfg):
  """An unrolled tree in the layout of ``model_cfg`` (stacked when it scans its layers)."""
  if not model_cfg.scan_layers:
    return unrolled_tree
  return jax.tree_util.tree_map(np.asarray, architecture.scanned_params(unrolled_tree))


# Reading the file.

def _sha256(paths) -> str:
  digest = hashlib.sha256()
  for p in paths:
    with open(p, 'rb') as f:
      for chunk in iter(lambda: f.read(1 << 22), b''):
        digest.update(chunk)
  return digest.hexdigest()


def _read_npz(path: str) -> dict:
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise ValueError(f'{path} is not a readable .npz ({str(e).splitlines()[0]}); '
                     'pass an .npz of official variable names or a TensorFlow checkpoint '
                     'prefix') from None
  return arrays


def _read_tf_checkpoint(path: str):
  """(arrays, prefix) of a TensorFlow checkpoint prefix or folder."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f'reading the TensorFlow checkpoint {path} needs TensorFlow: '
                     "pip install -e '.[prepare]' (or convert it to an .npz where TensorFlow "
                     'is installed)') from None
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if prefix is None:
    raise ValueError(f'{path} holds no TensorFlow checkpoint (no "checkpoint" file naming one)')
  try:
    reader = tf.train.load_checkpoint(prefix)
    arrays = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'the TensorFlow checkpoint {prefix} is unreadable '
                     f'({str(e).splitlines()[0][:200]})') from None
  return arrays, prefix


def read_weights(path: str):
  """{official name: array} of an .npz or a TensorFlow checkpoint, and a record of the source
  (path, format, sha256 of its files, the step its name gives)."""
  path = os.path.expanduser(path)
  if os.path.isfile(path) and zipfile.is_zipfile(path):
    arrays, files, kind, step = _read_npz(path), [path], 'npz', None
  elif os.path.isfile(path + '.index') or os.path.isdir(path):
    arrays, path = _read_tf_checkpoint(path)
    files = sorted(str(p) for p in pathlib.Path(path).parent.glob(pathlib.Path(path).name + '.*'))
    kind = 'tensorflow checkpoint'
    match = re.search(r'-([0-9]+)$', path)
    step = int(match.group(1)) if match else None
  elif os.path.isfile(path):
    raise ValueError(f'{path} is neither an .npz of official variable names nor a TensorFlow '
                     'checkpoint (for a checkpoint, pass its prefix, e.g. .../model-400000)')
  else:
    raise ValueError(f'{path} not found (expected an .npz, or a TensorFlow checkpoint prefix '
                     'with PREFIX.index beside it)')
  # Some exports keep TensorFlow's ':0' output suffix.
  arrays = {re.sub(r':0$', '', name): value for name, value in arrays.items()}
  source = {'path': os.path.abspath(path), 'format': kind, 'sha256': _sha256(files),
            'step_in_name': step}
  return arrays, source


# Matching it to the config.

def _config_signature(model_cfg):
  """What a file's names and shapes show of an architecture, from the config alone: the number
  of coupling steps and each one's position embedding [H, W, filters]."""
  flows = [model_cfg.main]
  if model_cfg.dequant.kind == 'variational':
    flows.append(model_cfg.dequant)
  shapes = []
  for flow in flows:
    for (kind, count), (_, (h, w, _)) in zip(
        architecture.parse_layout(flow.layout),
        architecture.stage_shapes(flow.layout, model_cfg.image_shape)):
      if kind != 's2d':
        shapes += [(h, w // 2 if kind == 'checker' else w, flow.filters)] * count
  return len(shapes), sorted(shapes)


def guess_config(arrays) -> str:
  """The name of the shipped config whose architecture the file's names and shapes show, or
  ''."""
  # Each variable once, whether the file keys it by its name, its average or both.
  shapes = {name.removesuffix(EMA_SUFFIX): np.shape(value) for name, value in arrays.items()}
  norms = {name.split('/')[0] for name in shapes if re.match(r'^Norm(_[0-9]+)?/', name)}
  pos_embs = sorted(tuple(s) for n, s in shapes.items() if n.endswith('/pos_emb'))
  for name in _PAPER_CONFIGS:
    path = _CONFIGS_DIR / f'{name}.py'
    if path.exists() and _config_signature(
        config_defaults.config_from_file(path).model) == (len(norms), pos_embs):
      return name
  return ''


def _hint(arrays) -> str:
  guess = guess_config(arrays)
  return f'; this looks like {guess} weights (configs/{guess}.py)' if guess else ''


def _more(items) -> str:
  return f' (and {len(items) - 1} more)' if len(items) > 1 else ''


def _parts(arrays, names, config_name: str):
  """Splits the file into raw values, EMA values and Adam slots of ``names``, and says whether
  the raw values came from the averages (a file of averages alone, as the authors' ImageNet
  files are). Raises ValueError for a missing, unknown or mixed-up variable."""
  known = set(names)
  extra = {n + s for n in names for s in (EMA_SUFFIX,) + ADAM_SUFFIXES}
  extra |= {'beta1_power', 'beta2_power'}
  missing = [n for n in names if n not in arrays and n + EMA_SUFFIX not in arrays]
  unknown = sorted(n for n in arrays if n not in known and n not in extra)
  if missing:
    raise ValueError(f'the weights have no variable {missing[0]}{_more(missing)}, which '
                     f'{config_name} needs{_hint(arrays)}')
  if unknown:
    raise ValueError(f'the weights hold {unknown[0]}{_more(unknown)}, which {config_name} does '
                     f'not have{_hint(arrays)}')
  averages_only = [n for n in names if n not in arrays]
  if averages_only and len(averages_only) < len(names):
    raw = next(n for n in names if n in arrays)
    raise ValueError(f'the weights mix two layouts: {raw} is stored under its name, '
                     f'{averages_only[0]}{_more(averages_only)} only as {averages_only[0]}'
                     f'{EMA_SUFFIX}; a file holds every variable under its name, or every one '
                     f'as NAME{EMA_SUFFIX} alone (as the authors\' ImageNet files do)')

  def slot(suffix):
    present = [n for n in names if n + suffix in arrays]
    if present and len(present) < len(names):
      absent = next(n for n in names if n + suffix not in arrays)
      raise ValueError(f'the weights have {suffix[1:]} values for {len(present)} of '
                       f'{len(names)} variables ({absent} has none)')
    return {n: arrays[n + suffix] for n in names} if present else None

  ema = slot(EMA_SUFFIX)
  raw = ema if averages_only else {n: arrays[n] for n in names}
  return raw, ema, slot('/Adam'), slot('/Adam_1'), bool(averages_only)


def _check_values(part, nmap: official_names.NameMap, what: str, arrays) -> None:
  errors = nmap.shape_errors(part)
  if errors:
    name, got, need = errors[0]
    more = f' ({len(errors) - 1} more variables differ)' if len(errors) > 1 else ''
    raise ValueError(f'{name}{what} has shape {list(got)} where the config needs {list(need)}'
                     f'{more}{_hint(arrays)}')
  for name, value in part.items():
    if not np.issubdtype(np.asarray(value).dtype, np.floating):
      raise ValueError(f'{name}{what} is {np.asarray(value).dtype}, not floating point')
    if not np.all(np.isfinite(value)):
      raise ValueError(f'{name}{what} holds non-finite values')


def build_state(config, arrays, source, config_name: str = 'the config'):
  """The TrainState (numpy arrays, in the config's layout) that the file describes, and a record
  of what was used. Raises ValueError when the file does not fit the config."""
  nmap = name_map(config.model)
  raw, ema, adam_m, adam_v, averages_only = _parts(arrays, nmap.names, config_name)
  for part, what in ((None if averages_only else raw, ''), (ema, EMA_SUFFIX),
                     (adam_m, '/Adam'), (adam_v, '/Adam_1')):
    if part is not None:
      _check_values(part, nmap, what, arrays)
  tree = lambda part: _to_layout(nmap.from_official(part), config.model)
  params = tree(raw)
  ema_params = tree(ema) if ema is not None else params
  direction = optim.adam_direction(config.optimizer)
  opt_state = jax.tree_util.tree_map(np.asarray, direction.init(params))
  adam_count = None
  if adam_m is not None and adam_v is not None:
    if 'beta1_power' in arrays:
      # TensorFlow's Adam keeps beta1^(t + 1) after t updates.
      adam_count = round(math.log(float(arrays['beta1_power'])) / math.log(config.optimizer.b1)) - 1
    else:
      adam_count = source['step_in_name'] or 0
    opt_state = optim.with_adam_moments(opt_state, np.int32(adam_count), tree(adam_m),
                                        tree(adam_v))
  step = source['step_in_name'] if source['step_in_name'] is not None else (adam_count or 0)
  zero = np.int32(0)
  state = steps.TrainState(step=np.int32(step), params=params, ema_params=ema_params,
                           opt_state=opt_state, nonfinite_in_row=zero, nonfinite_total=zero)
  record = dict(
      source, variables=len(nmap.names),
      parameters=int(sum(np.size(v) for v in raw.values())), step=int(step),
      layout=LAYOUT_AVERAGES if averages_only else LAYOUT_PLAIN,
      params_from=(f'the {EMA_SUFFIX[1:]} values (the file has no raw values)' if averages_only
                   else 'the raw values'),
      ema_from=(f'the {EMA_SUFFIX[1:]} values' if ema is not None
                else 'the raw values (the file has no averages)'),
      adam_from=(f'the Adam slots, {adam_count} updates' if adam_count is not None
                 else 'fresh moments (the file has no Adam slots)'))
  return state, record


def _check_new_workdir(workdir) -> None:
  workdir = fileio.path(workdir)
  held = [p for p in ('checkpoints', experiment.CONFIG_FILE)
          if (workdir / p).exists() and (not (workdir / p).is_dir() or any((workdir / p).iterdir()))]
  if held:
    raise ValueError(f'{workdir} already holds a run ({held[0]}); importing never overwrites '
                     'one: pass a new --workdir')


def import_weights(config, weights: str, workdir, config_name: str = 'the config') -> dict:
  """Reads ``weights``, checks them against ``config`` and writes the workdir; returns the
  record also written to WORKDIR/imported_weights.json. Nothing is written on bad input."""
  experiment.validate_run_config(config, device_count=1)
  _check_new_workdir(workdir)
  arrays, source = read_weights(weights)
  state, record = build_state(config, arrays, source, config_name)
  record.update(imported_at=datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'), flowpp_jax_version=flowpp_jax.__version__)
  exp = experiment.Experiment(config, workdir, device_count=1)
  try:
    exp.save(state)
    exp.checkpoints.wait()
  finally:
    exp.checkpoints.close()
  exp.write_config()
  fileio.write_text(fileio.path(workdir) / RECORD_FILE, json.dumps(record, indent=2) + '\n')
  return record


def authors_layout(model_cfg) -> str:
  """The layout that the authors' PyTorch loader of this architecture reads
  (localbitsback's compression/models/load_flowpp_*.py): names for CIFAR-10, averages for the
  ImageNet launchers."""
  return LAYOUT_AVERAGES if official_names.imagenet_family(model_cfg) else LAYOUT_PLAIN


def export_weights(workdir, out: str, layout: str = 'authors'):
  """Writes the latest EMA parameters of ``workdir`` to ``out``, an .npz of official names in
  ``layout`` ('plain', 'averages', or 'authors': the one the authors' loader of the
  architecture reads); returns (number of variables, the layout written)."""
  if os.path.exists(out):
    raise ValueError(f'{out} exists; --export never overwrites a file: choose another path')
  config = experiment.load_config(workdir)
  exp = experiment.Experiment(config, workdir, read_only=True, device_count=1)
  try:
    state = exp.restore()
  finally:
    exp.checkpoints.close()
  if state is None:
    raise ValueError(f'no checkpoint in {exp.checkpoints.directory}')
  ema = state.ema_params
  if config.model.scan_layers:
    ema = architecture.unscanned_params(ema)
  arrays = name_map(config.model).to_official(ema)
  if layout == 'authors':
    layout = authors_layout(config.model)
  if layout == LAYOUT_AVERAGES:
    arrays = {name + EMA_SUFFIX: value for name, value in arrays.items()}
  with fileio.replaced(out) as partial, open(partial, 'wb') as f:
    np.savez(f, **arrays)  # to a file object: np.savez adds .npz to a name without it
  return len(arrays), layout
