"""flowpp_jax.nn.backend.conv2d: its written-out gradient (CPU) against autodiff of XLA's
convolution in float64, alone and inside lax.scan and vmap as the scanned model uses it."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.nn.backend import conv2d

# conv2d writes its gradient out on the CPU only; elsewhere it is autodiff's own.
pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu',
                                reason="the written-out gradient is the CPU backend's")

try:  # Older jax versions.
  from jax.experimental import enable_x64
except ImportError:  # Newer jax: the context manager lives at top level.
  enable_x64 = jax.enable_x64


def _reference(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _inputs(seed, k, shape=(2, 5, 4, 3), out=6, dtype=np.float64):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape), dtype),
          jnp.asarray(rng.normal(size=(k, k, shape[-1], out)), dtype),
          jnp.asarray(rng.normal(size=(*shape[:-1], out)), dtype))


def _grads(conv, x, w, cotangent):
  return jax.grad(lambda x, w: jnp.sum(conv(x, w) * cotangent), argnums=(0, 1))(x, w)


@pytest.mark.parametrize('k', [1, 3, 5])
def test_values_and_gradients_match_autodiff_in_float64(k):
  with enable_x64(True):
    x, w, cotangent = _inputs(k, k)
    np.testing.assert_allclose(conv2d(x, w), _reference(x, w), rtol=1e-13, atol=1e-13)
    got, want = _grads(conv2d, x, w, cotangent), _grads(_reference, x, w, cotangent)
    for g, r in zip(got, want):
      assert g.dtype == jnp.float64
      assert np.max(np.abs(r)) > 1.0  # a real gradient, so the comparison can fail
      np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)


def test_gradients_inside_scan_and_vmap_match_autodiff():
  """Stacked kernels under lax.scan (model.scan_layers) and a per-example vmap (the loss)."""
  with enable_x64(True):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(3, 1, 6, 4, 5)))
    kernels = jnp.asarray(0.3 * rng.normal(size=(4, 3, 3, 5, 5)))

    def total(kernels, x, conv):
      def per_example(x):
        y, _ = lax.scan(lambda h, w: (jnp.tanh(conv(h, w)), None), x, kernels)
        return jnp.sum(y ** 2)
      return jnp.sum(jax.vmap(per_example)(x))

    def loss(conv):
      return jax.grad(total, argnums=(0, 1))(kernels, x, conv)

    for g, r in zip(loss(conv2d), loss(_reference)):
      np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-12)


def test_bfloat16_operands_give_their_dtype_back():
  x, w, cotangent = _inputs(3, 3, dtype=np.float32)
  x, w, cotangent = (a.astype(jnp.bfloat16) for a in (x, w, cotangent))
  dx, dw = _grads(conv2d, x, w, cotangent)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  want = _grads(_reference, *(a.astype(jnp.float32) for a in (x, w)),
                cotangent.astype(jnp.float32))
  for g, r in zip((dx, dw), want):
    np.testing.assert_allclose(np.asarray(g, np.float32), r, rtol=0.05,
                               atol=0.05 * np.max(np.abs(r)))


def test_even_or_non_square_kernels_are_refused():
  x = jnp.zeros((1, 4, 4, 2))
  for shape in ((2, 2, 2, 3), (3, 1, 2, 3)):
    with pytest.raises(ValueError, match='odd size'):
      conv2d(x, jnp.zeros(shape))


def test_lowering_for_another_platform_takes_its_choices_and_ends_with_the_block():
  """Inside backend.lowering_for('tpu') the programs are those a TPU takes: autodiff's
  convolutions for the gradient (not the CPU's k*k products), attention in one block, the
  conv bias as it is; afterwards the CPU's again."""
  from flowpp_jax.nn import backend  # pylint: disable=g-import-not-at-top
  x, w, _ = _inputs(0, 3, dtype=np.float32)
  grad_text = lambda: str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv2d(x, w))))(w))
  # A new function each time: jax caches a function's trace without this setting in its key.
  bias_text = lambda: str(jax.make_jaxpr(lambda b: backend.plain_array(b))(jnp.ones(4)))
  cpu = (grad_text(), bias_text(), backend.default_query_chunk(512, 512))
  assert 'dot_general' in cpu[0] and 'dot_general' in cpu[1] and cpu[2] == 128
  with backend.lowering_for('tpu'):
    assert backend.platform() == 'tpu' and not backend.on_cpu()
    assert 'dot_general' not in grad_text() and 'dot_general' not in bias_text()
    assert backend.default_query_chunk(512, 512) is None
  assert (grad_text(), bias_text(), backend.default_query_chunk(512, 512)) == cpu
