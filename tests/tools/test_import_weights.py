"""Importing the official code's weights: each fixture of tests/fixtures/official (built,
initialised and run by the authors' TensorFlow code) reproduces the official outputs; a
TensorFlow checkpoint brings its EMA and Adam state; --export gives the official file back
byte for byte; an imported workdir evaluates, samples and resumes; bad files are refused with
one line and nothing written."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flowpp_jax
from conftest import (OFFICIAL, ROOT, assert_one_error_line, initialised_workdir, load_config,
                      official_fixture_config)
from flowpp_jax import architecture
from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.official import names as official_names
from flowpp_jax.official import weights as official_weights
from flowpp_jax.trainer import experiment

FIXTURES = ('cifar10', 'imagenet32', 'imagenet64')


def override_flags(name):
  """The fixture config as command-line overrides of configs/<name>.py."""
  config, base = official_fixture_config(name), load_config(name)
  flags = []
  for flow in ('main', 'dequant'):
    for field in ('filters', 'blocks', 'components', 'heads'):
      if config.model[flow][field] != base.model[flow][field]:
        flags.append(f'--config.model.{flow}.{field}={config.model[flow][field]}')
  return [f'--config=configs/{name}.py'] + flags


def official_outputs(model_cfg, params, io):
  """Our model's u, log q, z, main log-det, bits/dim and inverse on the fixture's inputs, with
  its fixed dequantization noise eps."""
  model = FlowPlusPlus(model_cfg)
  dims = int(np.prod(model_cfg.image_shape)) * np.log(2.0)

  def run(module, x, eps, y, z):
    x = x.astype(jnp.float32)
    u, log_q = module.dequantizer.from_noise(x, eps)
    z_ours, log_det = module.main_flow(y)
    bpd = -(module.log_density(x + u) - log_q) / dims
    return {'u': u, 'logq': log_q, 'z': z_ours, 'main_logdet': log_det, 'bpd': bpd,
            'y_inverse': module.main_flow(z, inverse=True)[0]}
  return jax.device_get(jax.jit(lambda p, *a: model.apply({'params': p}, *a, method=run))(
      params, io['x'], io['eps'], io['y'], io['z']))


def relative(ours, theirs):
  """max |ours - theirs| / max |theirs|."""
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def assert_matches_official(out, io, name, inverse_tol=1e-3):
  """Float32 rounding: bits/dim to 1e-6, the rest to about 1e-5 of their scale. One z element
  in the trained checkpoint's 6,144 sits where the flow is steep (6.6e-4 off, the others
  within 3e-5), hence the quantile."""
  assert np.max(np.abs(out['bpd'] - io['bpd']) / io['bpd']) < 1e-6
  for key, tol in (('z', 1e-4), ('main_logdet', 1e-6), ('logq', 1e-5), ('u', 1e-5)):
    assert relative(out[key], io[key]) < tol, (key, relative(out[key], io[key]))
  assert np.quantile(np.abs(out['z'] - io['z']), 0.999) < 5e-5
  # An exact inverse gives back y; the ImageNet launchers' own inverse clips the mixture CDF
  # and does not (fixtures' README), CIFAR-10's comes within 0.005 of it (0.017 after
  # training).
  assert np.max(np.abs(out['y_inverse'] - io['y'])) < inverse_tol
  if name == 'cifar10':
    assert np.max(np.abs(out['y_inverse'] - io['y_inverse'])) < 2e-2


def build(name, scan_layers, arrays=None, source=None):
  config = official_fixture_config(name, scan_layers)
  if arrays is None:
    arrays, source = official_weights.read_weights(str(OFFICIAL / f'{name}_tiny_weights.npz'))
  return config, official_weights.build_state(config, arrays, source)


def as_averages(arrays):
  """The layout of the authors' ImageNet 32 and 64 files: NAME/ExponentialMovingAverage alone."""
  return {name + official_weights.EMA_SUFFIX: value for name, value in arrays.items()}


def released_layout(name, directory):
  """The fixture's weights keyed as the authors' file of its architecture keys them
  (localbitsback's load_flowpp_cifar.py reads names, load_flowpp_imagenet{32,64}.py averages)."""
  if name == 'cifar10':
    return OFFICIAL / f'{name}_tiny_weights.npz'
  path = directory / f'{name}_released.npz'
  np.savez(path, **as_averages(np.load(OFFICIAL / f'{name}_tiny_weights.npz')))
  return path


def same_trees(a, b):
  return jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


# Every fixture in the configs' scanned layout and in its released layout, which for ImageNet
# gives the same state as the names; the unrolled layout once (the two compute the same:
# tests/test_layer_options.py).
@pytest.mark.parametrize('name,scan_layers', [(name, True) for name in FIXTURES]
                         + [('cifar10', False)])
def test_fixture_reproduces_the_official_outputs(name, scan_layers, tmp_path):
  config, (state, record) = build(name, scan_layers)
  io = np.load(OFFICIAL / f'{name}_tiny_io.npz')
  assert record['variables'] == len(np.load(OFFICIAL / f'{name}_tiny_weights.npz').files)
  assert record['layout'] == 'plain' and record['ema_from'].startswith('the raw values')
  assert_matches_official(official_outputs(config.model, state.ema_params, io), io, name)
  if name != 'cifar10':
    _, (released, record) = build(name, scan_layers, *official_weights.read_weights(
        str(released_layout(name, tmp_path))))
    assert record['layout'] == 'averages'
    assert record['params_from'] == ('the ExponentialMovingAverage values (the file has no raw '
                                     'values)')
    assert same_trees(released.params, state.params)
    assert same_trees(released.ema_params, state.params)


@pytest.mark.parametrize('name', FIXTURES)
def test_released_layouts_import_and_export_back(name, tmp_path):
  """A file keyed as the authors' release of its architecture imports; --export writes the
  same keys and arrays back, so the authors' loader reads it; the other layout on request."""
  weights = released_layout(name, tmp_path)
  record = official_weights.import_weights(official_fixture_config(name), str(weights),
                                         tmp_path / 'run')
  expected = 'plain' if name == 'cifar10' else 'averages'
  assert record['layout'] == expected
  assert json.loads((tmp_path / 'run' / 'imported_weights.json').read_text())['layout'] == expected
  assert official_weights.export_weights(tmp_path / 'run', str(tmp_path / 'back.npz')) == (
      len(np.load(weights).files), expected)
  original, back = np.load(weights), np.load(tmp_path / 'back.npz')
  assert sorted(original.files) == sorted(back.files)
  for key in original.files:
    assert original[key].dtype == back[key].dtype and np.array_equal(original[key], back[key])
  other = 'averages' if expected == 'plain' else 'plain'
  official_weights.export_weights(tmp_path / 'run', str(tmp_path / 'other.npz'), other)
  names = np.load(OFFICIAL / f'{name}_tiny_weights.npz').files
  wanted = names if other == 'plain' else list(as_averages(dict.fromkeys(names)))
  assert sorted(np.load(tmp_path / 'other.npz').files) == sorted(wanted)


def test_every_variable_lands_where_the_name_says():
  """Distinct values per variable: a swapped pair of names would change the outputs above, and
  here each official name finds exactly its own array back."""
  config = official_fixture_config('cifar10', scan_layers=False)
  nmap = official_weights.name_map(config.model)
  arrays = {name: np.full(shape, i, np.float32) for i, (_, name, shape) in enumerate(nmap.entries)}
  tree = nmap.from_official(arrays)
  for i, (path, name, _) in enumerate(nmap.entries):
    leaf = tree
    for key in path:
      leaf = leaf[key]
    assert np.all(leaf == i), name
  assert len(set(nmap.names)) == len(nmap.names)


@pytest.mark.parametrize('config_name,expected', [
    ('cifar10_affine', 'AffineAttnCoupling_12/block0/attn/proj1/W'),
    ('cifar10_no_attention', 'MixLogisticCoupling_12/block0/attn/proj1/W'),
    ('cifar10_uniform_dequant', 'MixLogisticAttnCoupling_8/proj_out/W'),
])
def test_ablation_configs_take_their_launchers_names(config_name, expected):
  config = load_config(config_name)
  config.model.main.update(filters=8, blocks=1)
  config.model.dequant.update(filters=8)
  nmap = official_weights.name_map(config.model)
  assert expected in nmap.names
  if config_name == 'cifar10_uniform_dequant':  # no dequantizer: the main flow starts at Norm
    assert 'Norm/norm0/g' in nmap.names and not any('context_proc' in n for n in nmap.names)
  # Our values -> official names -> our values, in both layouts.
  arrays = {name: np.random.default_rng(0).normal(size=shape).astype(np.float32)
            for _, name, shape in nmap.entries}
  tree = nmap.from_official(arrays)
  again = nmap.to_official(architecture.unscanned_params(architecture.scanned_params(tree)))
  assert all(np.array_equal(again[k], arrays[k]) for k in arrays)


def test_npz_with_averages_and_adam_slots():
  """An .npz may carry a checkpoint's EMA and Adam entries: they fill the EMA and Adam state."""
  arrays, source = official_weights.read_weights(str(OFFICIAL / 'cifar10_tiny_weights.npz'))
  names = list(arrays)
  full = dict(arrays)
  for n in names:
    full[n + '/ExponentialMovingAverage'] = arrays[n] + 1.0
    full[n + '/Adam'] = np.full_like(arrays[n], 0.25)
    full[n + '/Adam_1'] = np.full_like(arrays[n], 0.5)
  full['beta1_power'] = np.float32(0.9 ** 6)  # after 5 updates
  full['beta2_power'] = np.float32(0.999 ** 6)
  _, (state, record) = build('cifar10', True, full, source)
  assert int(state.step) == 5 and record['adam_from'] == 'the Adam slots, 5 updates'
  adam = state.opt_state[1]
  assert int(adam.count) == 5
  pos_emb = lambda tree: tree['main_flow']['layers_2']['steps']['coupling']['net']['pos_emb']
  # Scanned layout: the main flow's first stage stacks MixLogisticAttnCoupling_4.._7.
  np.testing.assert_array_equal(pos_emb(state.params)[1],
                                arrays['MixLogisticAttnCoupling_5/pos_emb'])
  np.testing.assert_array_equal(pos_emb(state.ema_params)[1],
                                arrays['MixLogisticAttnCoupling_5/pos_emb'] + 1.0)
  assert np.all(pos_emb(adam.mu) == 0.25) and np.all(pos_emb(adam.nu) == 0.5)


def test_tensorflow_checkpoint_gives_ema_outputs_and_training_state(tmp_path):
  """The official trainer's checkpoint (3 steps after init): EMA weights reproduce the outputs
  the official evaluation computed with them; params, EMA and Adam differ as they should."""
  pytest.importorskip('tensorflow')
  config = official_fixture_config('cifar10')
  record = official_weights.import_weights(config, str(OFFICIAL / 'cifar10_tiny_ckpt'), tmp_path)
  assert record['step'] == 3 and record['format'] == 'tensorflow checkpoint'
  assert record['adam_from'] == 'the Adam slots, 3 updates'
  exp = experiment.Experiment(config, tmp_path, read_only=True, device_count=1)
  state = exp.restore()
  exp.checkpoints.close()
  assert int(state.step) == 3 and int(state.opt_state[1].count) == 3
  io = np.load(OFFICIAL / 'cifar10_tiny_ckpt_io.npz')
  assert_matches_official(official_outputs(config.model, state.ema_params, io), io, 'cifar10',
                          inverse_tol=2e-2)
  differ = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(a - b))), state.params,
                                  state.ema_params)
  assert 0 < max(jax.tree_util.tree_leaves(differ)) < 1e-2
  assert all(np.all(np.asarray(v) >= 0) for v in jax.tree_util.tree_leaves(state.opt_state[1].nu))


def cli(*args, env=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run([sys.executable, '-m', 'flowpp_jax.import_weights', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def test_import_then_export_gives_the_file_back_and_the_workdir_samples(tmp_path):
  """The command on ImageNet 32 as the authors released it (averages alone), and back."""
  weights = released_layout('imagenet32', tmp_path)
  workdir = tmp_path / 'run'
  result = cli(*override_flags('imagenet32'), f'--weights={weights}', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'read 1787 variables (767,658 parameters)' in result.stdout
  assert ('parameters and EMA from the ExponentialMovingAverage values; the file has no raw '
          'values') in result.stdout
  record = json.loads((workdir / 'imported_weights.json').read_text())
  assert record['path'] == str(weights) and len(record['sha256']) == 64
  out = tmp_path / 'back.npz'
  result = cli(f'--workdir={workdir}', f'--export={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'keyed by NAME/ExponentialMovingAverage' in result.stdout
  original, back = np.load(weights), np.load(out)
  assert sorted(original.files) == sorted(back.files)
  for name in original.files:
    assert original[name].dtype == back[name].dtype and np.array_equal(original[name], back[name])
  with pytest.raises(ValueError, match='exists'):
    official_weights.export_weights(workdir, str(out))
  # The workdir is an ordinary one: the API reads it (and so --mode=sample, which shares its
  # sampler).
  model = flowpp_jax.load(workdir)
  io = np.load(OFFICIAL / 'imagenet32_tiny_io.npz')
  assert np.all(np.abs(model.bpd(io['x']) - io['bpd']) < 0.05)  # another eps: same scale
  np.testing.assert_array_equal(model.decode(model.encode(io['x'])), io['x'])
  assert model.sample(2).shape == (2, 32, 32, 3)


def test_exported_run_imports_evaluates_and_resumes(tmp_path):
  """digits: a run exported to official names and imported again has the same EMA parameters
  (same bits/dim through the API), evaluates, and trains on from the imported state."""
  config = initialised_workdir(tmp_path / 'original')
  official_weights.export_weights(tmp_path / 'original', str(tmp_path / 'digits.npz'))
  official_weights.import_weights(config, str(tmp_path / 'digits.npz'), tmp_path / 'imported')
  images = experiment.Experiment(config, tmp_path / 'original', read_only=True).source('test')
  images = images[np.arange(8)]
  np.testing.assert_array_equal(flowpp_jax.load(tmp_path / 'original').bpd(images),
                                flowpp_jax.load(tmp_path / 'imported').bpd(images))
  workdir = tmp_path / 'imported'
  main = [sys.executable, '-m', 'flowpp_jax.main', '--config=configs/digits.py:tiny',
          f'--workdir={workdir}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(main + ['--config.num_train_steps=4'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from' in result.stdout
  # Training ends with the evaluation --mode=eval runs.
  evaluated = json.loads((workdir / 'eval.json').read_text())
  assert evaluated['step'] == 4 and np.isfinite([evaluated['bpd'], evaluated['bpd_iw']]).all()


def snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def test_a_workdir_with_a_run_is_refused_and_kept(tmp_path):
  weights = str(OFFICIAL / 'cifar10_tiny_weights.npz')
  workdir = tmp_path / 'run'
  official_weights.import_weights(official_fixture_config('cifar10'), weights, workdir)
  before = snapshot(workdir)
  assert_one_error_line(cli(*override_flags('cifar10'), f'--weights={weights}',
                            f'--workdir={workdir}'), 'already holds a run', str(workdir))
  assert snapshot(workdir) == before


def fails(config, weights, workdir, *fragments):
  with pytest.raises(ValueError) as error:
    official_weights.import_weights(config, str(weights), workdir)
  for fragment in fragments:
    assert fragment in str(error.value), str(error.value)
  assert not workdir.exists()


def test_bad_files_are_refused_with_what_to_do(tmp_path):
  config = official_fixture_config('cifar10')
  arrays = dict(np.load(OFFICIAL / 'cifar10_tiny_weights.npz'))
  workdir = tmp_path / 'never'
  text = tmp_path / 'weights.txt'
  text.write_text('not weights')
  fails(config, text, workdir, 'neither an .npz', 'prefix')
  fails(config, tmp_path / 'absent.npz', workdir, 'not found')
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes((OFFICIAL / 'cifar10_tiny_weights.npz').read_bytes()[:50_000])
  fails(config, truncated, workdir)

  def variant(name, **changes):
    path = tmp_path / f'{name}.npz'
    np.savez(path, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
    return path
  fails(config, variant('missing', **{'Pointwise_7/W1': None}), workdir,
        'no variable Pointwise_7/W1')
  fails(config, variant('unknown', **{'extra/W': np.zeros(3, np.float32)}), workdir,
        'extra/W', 'does not have')
  bad = arrays['Norm_3/norm1/g'].copy()
  bad[0, 0, 0] = np.nan
  fails(config, variant('nan', **{'Norm_3/norm1/g': bad}), workdir, 'Norm_3/norm1/g',
        'non-finite')
  wider = official_fixture_config('cifar10')
  wider.model.main.filters = 16
  fails(wider, OFFICIAL / 'cifar10_tiny_weights.npz', workdir,
        'MixLogisticAttnCoupling_4/pos_emb has shape [32, 16, 8] where the config needs '
        '[32, 16, 16]')


def test_full_size_weights_of_another_config_are_recognised():
  """Full-size weights of each released architecture, keyed by names or by averages alone,
  imported with another's config: the error names the config they fit. (Zero-stride arrays:
  no memory for 31M parameters.)"""
  released = {}
  for name in FIXTURES:
    nmap = official_weights.name_map(load_config(name).model)
    released[name] = {n: np.broadcast_to(np.float32(1), shape) for _, n, shape in nmap.entries}
  for name, plain in released.items():
    for arrays in (plain, as_averages(plain)):
      assert official_weights.guess_config(arrays) == name
      for other in FIXTURES:
        if other != name:
          with pytest.raises(ValueError, match=f'looks like {name} weights '
                                               fr'\(configs/{name}.py\)'):
            official_weights.build_state(load_config(other), arrays,
                                       {'step_in_name': None, 'path': 'x'})


def test_a_file_mixing_names_and_averages_is_refused(tmp_path):
  arrays = dict(np.load(OFFICIAL / 'cifar10_tiny_weights.npz'))
  names = list(arrays)
  mixed = {**{n: arrays[n] for n in names[:10]}, **as_averages({n: arrays[n] for n in names[10:]})}
  np.savez(tmp_path / 'mixed.npz', **mixed)
  workdir = tmp_path / 'run'
  assert_one_error_line(
      cli(*override_flags('cifar10'), f'--weights={tmp_path / "mixed.npz"}',
          f'--workdir={workdir}'),
      'mix two layouts', f'{names[0]} is stored under its name',
      f'{names[10]} (and {len(names) - 11} more) only as {names[10]}/ExponentialMovingAverage')
  assert not workdir.exists()


def test_a_checkpoint_without_tensorflow_names_the_extra(tmp_path):
  fake = tmp_path / 'no_tf' / 'tensorflow'
  fake.mkdir(parents=True)
  (fake / '__init__.py').write_text("raise ImportError('TensorFlow is not installed')\n")
  result = cli(*override_flags('cifar10'), f'--weights={OFFICIAL / "cifar10_tiny_ckpt" / "model-3"}',
               f'--workdir={tmp_path / "run"}', env={'PYTHONPATH': str(fake.parent)})
  assert_one_error_line(result, 'needs TensorFlow', "pip install -e '.[prepare]'")
  assert not (tmp_path / 'run').exists()


def test_layer_norms_take_the_official_shapes():
  cifar = official_weights.name_map(official_fixture_config('cifar10').model)
  imagenet = official_weights.name_map(official_fixture_config('imagenet64').model)
  shape = lambda nmap, name: next(s for _, n, s in nmap.entries if n == name)
  assert shape(cifar, 'MixLogisticAttnCoupling/block0/ln1/g') == (1, 1, 1, 8)
  assert shape(imagenet, 'MixLogisticAttnCoupling/block0/ln1/g') == (4,)
  assert official_names.imagenet_family(official_fixture_config('imagenet32').model)
