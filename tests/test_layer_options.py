"""model.scan_layers and model.remat change how the model is compiled, never what it computes:
the scanned model equals the unrolled one on the same (restacked) parameters, forward, inverse
and gradients; data-dependent init inside the scan sees the same data; remat's gradients equal
the stored-activation ones."""
import chex
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import init_model, load_config, tiny_model_config
from flowpp_jax import architecture
from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.trainer import summary

# Two steps per stage and two blocks per conditioner, so both scans have a real loop.
_LAYOUT = dict(main_layout='checker2 s2d channel2', dequant_layout='checker2')


def _config(**options):
  cfg = tiny_model_config(**_LAYOUT)
  cfg.main.blocks = 2  # the dequantizer's nets stay at one block: the same code, less compiling
  cfg.update(options)
  return cfg


def _images(cfg, seed=0, batch=8):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, *cfg.image_shape), 0,
                            cfg.num_levels).astype(jnp.uint8)


@pytest.fixture(scope='module')
def unrolled():
  cfg = _config(scan_layers=False)
  model = FlowPlusPlus(cfg)
  x = _images(cfg)
  return model, x, jax.jit(lambda x: init_model(model, x))(x)['params']


def _bpd_and_grads(model, params, x, deterministic=False):
  key = jax.random.PRNGKey(5)

  def loss(p):
    out = model.apply({'params': p}, x, key, deterministic=deterministic,
                      rngs={'dropout': key})
    return jnp.mean(out['bpd']), out['bpd']
  (_, bpd), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return bpd, grads


def test_scanned_model_computes_what_the_unrolled_one_does(unrolled):
  model, x, params = unrolled
  scanned_model = FlowPlusPlus(_config(scan_layers=True))
  stacked = architecture.scanned_params(params)
  # The restacked tree is exactly the scanned model's own layout.
  own = jax.eval_shape(lambda x: init_model(scanned_model, x), x)['params']
  chex.assert_trees_all_equal_shapes_and_dtypes(stacked, own)
  assert stacked['main_flow']['layers_2']['steps']['coupling']['net']['stack']['blocks'][
      'conv']['c1']['W'].shape[:2] == (2, 2)  # [steps, blocks, 3, 3, 2F, F]

  # Without dropout: the two layouts draw their dropout masks from differently split keys.
  bpd, grads = _bpd_and_grads(model, params, x, deterministic=True)
  bpd_s, grads_s = _bpd_and_grads(scanned_model, stacked, x, deterministic=True)
  np.testing.assert_allclose(bpd_s, bpd, rtol=1e-5)
  chex.assert_trees_all_close(grads_s, architecture.scanned_params(grads), rtol=2e-4,
                              atol=1e-6)
  # The inverse runs the scans in reverse: samples from the same z are the same images.
  sample = lambda m, p: jax.jit(lambda k: m.apply({'params': p}, k, 8, method=m.sample))(
      jax.random.PRNGKey(9))
  np.testing.assert_array_equal(sample(scanned_model, stacked), sample(model, params))


def test_scanned_init_is_data_dependent_per_step(unrolled):
  model, x, params = unrolled
  scanned_model = FlowPlusPlus(_config(scan_layers=True))
  stacked = jax.jit(lambda x: init_model(scanned_model, x))(x)['params']
  # The dequantizer flow's first Norm sees the same noise eps in both layouts (eps depends on
  # the seed, not on any random parameter), so its data-initialised g and b agree.
  norms = lambda p: p['dequantizer']['flow']['layers_1']
  first_norm = norms(stacked)['steps']['norm']
  for name in ('g0', 'b0', 'g1', 'b1'):
    np.testing.assert_allclose(first_norm[name][0], norms(params)['step0']['norm'][name],
                               rtol=1e-5, atol=1e-6)
  # The second step's Norm was initialised on the first step's output, not on the same data.
  assert not np.allclose(first_norm['g0'][0], first_norm['g0'][1])
  bpd, _ = _bpd_and_grads(scanned_model, stacked, x)
  chex.assert_tree_all_finite(bpd)


def test_remat_changes_no_gradient(unrolled):
  # Scanned, as the ImageNet configs run it; the unrolled layout wraps the same step body.
  model, x, params = unrolled
  model, params = FlowPlusPlus(_config(scan_layers=True)), architecture.scanned_params(params)
  remat_model = FlowPlusPlus(_config(scan_layers=True, remat=True))
  bpd, grads = _bpd_and_grads(model, params, x)
  bpd_r, grads_r = _bpd_and_grads(remat_model, params, x)
  np.testing.assert_allclose(bpd_r, bpd, rtol=1e-6)
  chex.assert_trees_all_close(grads_r, grads, rtol=1e-5, atol=1e-7)


def test_scan_layers_keeps_the_parameter_count():
  cfg = load_config('cifar10').model
  counts = []
  for scan in (False, True):
    cfg.scan_layers = scan
    counts.append(summary.summary_rows(cfg)[1])
  assert counts[0] == counts[1]
  assert counts[0]['num_params'] == 31_443_440


def test_bad_layer_options_are_rejected():
  for field in ('remat', 'scan_layers'):
    cfg = ml_collections.ConfigDict(_config().to_dict(), type_safe=False)
    cfg[field] = 1
    with pytest.raises(ValueError, match=f'model.{field} must be True or False'):
      FlowPlusPlus(cfg).init(jax.random.PRNGKey(0), _images(cfg), jax.random.PRNGKey(0))
