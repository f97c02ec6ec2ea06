"""flowpp_jax.nn.attention: the values and the hand-written gradient of softmax(q k^T/sqrt(d)) v.

References are independent of the code under test: scipy's softmax in float64 for the values,
and reverse-mode autodiff of the textbook formula in float64 for the gradients (the code
under test uses its own custom_vjp).
"""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from scipy import special

from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.nn import backend
from flowpp_jax.nn.attention import flash_attention
from flowpp_jax.nn.backend import attention, default_query_chunk

try:  # Older jax versions.
  from jax.experimental import enable_x64
except ImportError:  # Newer jax: the context manager lives at top level.
  enable_x64 = jax.enable_x64

SHAPE_Q, SHAPE_KV = (2, 3, 8, 5), (2, 3, 11, 5)  # [B, heads, T, d], [B, heads, S, d]


def _inputs(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return tuple(scale * rng.normal(size=s) for s in (SHAPE_Q, SHAPE_KV, SHAPE_KV))


def _scipy_attention(q, k, v):
  scores = np.einsum('bhtd,bhsd->bhts', q, k) / np.sqrt(q.shape[-1])
  return np.einsum('bhts,bhsd->bhtd', special.softmax(scores, axis=-1), v)


def _textbook(q, k, v):
  scores = jnp.einsum('bhtd,bhsd->bhts', q, k) / jnp.sqrt(q.shape[-1])
  return jnp.einsum('bhts,bhsd->bhtd', jax.nn.softmax(scores, axis=-1), v)


def _grads(fn, q, k, v, cotangent):
  return jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize('save_lse', [False, True])
@pytest.mark.parametrize('query_chunk', [None, 1, 2, 4, 8])
def test_float64_values_and_gradients_match_references(query_chunk, save_lse):
  """Whole and in chunks of queries (a loop whose dk, dv gradients accumulate over chunks);
  the backward pass recomputing each row's max and sum (the CPU's default) or reading the
  forward pass's log-sum-exp (the other backends')."""
  with enable_x64(True):
    q, k, v = (jnp.asarray(a, jnp.float64) for a in _inputs(0))
    fn = lambda *a: attention(*a, jnp.float64, query_chunk, save_lse)
    out = fn(q, k, v)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _scipy_attention(*_inputs(0)), rtol=1e-12, atol=1e-13)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=out.shape))
    for got, want in zip(_grads(fn, q, k, v, cotangent),
                         _grads(_textbook, q, k, v, cotangent)):
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('chunks', [(None, 2), (4, 1), (2, None)])
def test_backward_chunks_apart_from_the_forward_ones(chunks):
  """The backward pass may walk the queries in other chunks than the forward pass (the CPU's
  default: smaller ones); values and gradients stay the float64 references'."""
  query_chunk, backward_chunk = chunks
  with enable_x64(True):
    q, k, v = (jnp.asarray(a, jnp.float64) for a in _inputs(10))
    fn = lambda *a: flash_attention(*a, jnp.float64, query_chunk, False, backward_chunk)
    cotangent = jnp.asarray(np.random.default_rng(11).normal(size=q.shape))
    np.testing.assert_allclose(fn(q, k, v), _scipy_attention(*_inputs(10)),
                               rtol=1e-12, atol=1e-13)
    for got, want in zip(_grads(fn, q, k, v, cotangent),
                         _grads(_textbook, q, k, v, cotangent)):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gradients_are_not_trivially_equal():
  """The gradient check above can fail: a cotangent change moves every input gradient."""
  with enable_x64(True):
    q, k, v = (jnp.asarray(a, jnp.float64) for a in _inputs(0))
    fn = lambda *a: attention(*a, jnp.float64)
    g1 = _grads(fn, q, k, v, jnp.ones(SHAPE_Q))
    g2 = _grads(fn, q, k, v, jnp.asarray(np.random.default_rng(2).normal(size=SHAPE_Q)))
    for a, b in zip(g1, g2):
      assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3


@pytest.mark.parametrize('scale', [1.0, 30.0])
def test_float32_matches_float64_reference(scale):
  """scale=30 gives scores of order 1e3: exp would overflow without the row max."""
  inputs = _inputs(3, scale)
  q, k, v = (jnp.asarray(a, jnp.float32) for a in inputs)
  out = attention(q, k, v)
  assert out.dtype == jnp.float32
  want = _scipy_attention(*inputs)
  np.testing.assert_allclose(out, want, rtol=2e-4, atol=2e-4 * scale)
  cotangent = np.random.default_rng(4).normal(size=out.shape)
  with enable_x64(True):
    want_grads = _grads(_textbook, *(jnp.asarray(a, jnp.float64) for a in inputs),
                        jnp.asarray(cotangent))
  got_grads = _grads(attention, q, k, v, jnp.asarray(cotangent, jnp.float32))
  # At scale 30 the softmax saturates and the true gradients are ~1e-90. What is left is the
  # float32 rounding of dw - rowsum(dout * out), two sums of the same value in different
  # orders (as in FlashAttention): of order eps32 * |dout| |v| |k|, i.e. ~1e-6 relative to
  # the gradient's natural scale |dout| |v| |k| / sqrt(d) (scale**2 here, with |dout| ~ 1).
  for got, want in zip(got_grads, want_grads):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-3,
                               atol=1e-3 * np.max(np.abs(want)) + 2e-6 * scale**2)


def test_bfloat16_products_keep_float32_results():
  inputs = _inputs(5)
  q, k, v = (jnp.asarray(a, jnp.float32) for a in inputs)
  out = attention(q, k, v, jnp.bfloat16)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, _scipy_attention(*inputs), atol=5e-2)
  for got in _grads(lambda *a: attention(*a, jnp.bfloat16), q, k, v, jnp.ones(SHAPE_Q)):
    assert got.dtype == jnp.float32 and np.all(np.isfinite(got))


@pytest.mark.parametrize('save_lse', [False, True])
@pytest.mark.parametrize('query_chunk', [None, 2])
def test_vmap_and_checkpoint_agree_with_plain_calls(query_chunk, save_lse):
  """The model calls it per example (vmap) and, with model.remat, under jax.checkpoint."""
  fn = lambda *a: attention(*a, jnp.float32, query_chunk, save_lse)
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(6))
  cotangent = jnp.asarray(np.random.default_rng(7).normal(size=SHAPE_Q), jnp.float32)
  plain = _grads(fn, q, k, v, cotangent)
  per_example = jax.vmap(lambda *a: _grads(fn, *(x[None] for x in a)))(q, k, v, cotangent)
  rematted = _grads(jax.checkpoint(fn), q, k, v, cotangent)
  for a, b, c in zip(plain, per_example, rematted):
    np.testing.assert_allclose(np.asarray(b)[:, 0], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, a, rtol=1e-6, atol=1e-7)


def test_default_chunk_divides_the_queries_and_bad_chunks_are_refused():
  chunk = default_query_chunk(512, 512)
  if jax.default_backend() == 'cpu':
    assert chunk == 128 and default_query_chunk(512, 512, backward=True) == 64
    assert default_query_chunk(12, 1 << 20) == 1 and default_query_chunk(7, 1) == 7
    assert 1000 % default_query_chunk(1000, 600) == 0
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(8))
  for bad in (0, 3, 16):
    with pytest.raises(ValueError, match='query_chunk'):
      attention(q, k, v, jnp.float32, bad)


def test_one_block_traces_every_query_for_the_cost_analysis():
  """XLA counts a loop body once: with one_block the count covers every query. The choice is
  an argument, so one jitted function never runs the other's program."""
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(9))

  def flops(**kwargs):
    analysis = jax.jit(lambda *a: attention(*a, **kwargs)).lower(q, k, v).cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops']

  whole = flops(query_chunk=None)
  assert flops(query_chunk=2) < whole / 2  # one of four chunks counted
  assert flops(query_chunk=2, one_block=True) == flops(one_block=True) == whole
  np.testing.assert_allclose(attention(q, k, v, query_chunk=2),
                             attention(q, k, v, one_block=True), rtol=1e-6, atol=1e-6)


def test_the_models_one_block_attention_is_its_own_program(tiny_config):
  """The benchmark's FLOP count: the model with one_block_attention is another module, so
  jit traces it afresh and its cost analysis counts every query chunk."""
  if jax.default_backend() != 'cpu':
    pytest.skip('query chunks are the CPU backend\'s')
  tiny_config.image_shape = (32, 32, 3)  # 512 positions at the first stage: 4 query chunks
  model = FlowPlusPlus(tiny_config)
  images = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  params = jax.eval_shape(lambda: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, images,
      jax.random.PRNGKey(2)))['params']

  def flops(module):
    lowered = jax.jit(lambda p, x: module.apply({'params': p}, x, jax.random.PRNGKey(3))).lower(
        params, images)
    analysis = lowered.cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)['flops']
  chunked = flops(model)
  assert flops(model.clone(one_block_attention=True)) > chunked
  assert flops(model) == chunked


def _fused_path_on_the_cpu(monkeypatch):
  """Takes the fused path as on a CUDA GPU in bfloat16, with jax's XLA formula standing in
  for cuDNN's kernel (which the CPU lacks), so that the code around the call runs."""
  monkeypatch.setattr(backend, 'cudnn_applies', lambda *a, **k: True)
  monkeypatch.setattr(backend, '_FUSED_IMPLEMENTATION', 'xla')


def test_cudnn_is_asked_only_on_gpus_for_16_bit_products_it_takes(monkeypatch):
  monkeypatch.delenv(backend.CUDNN_ENV, raising=False)
  applies = backend.cudnn_applies
  assert applies(jnp.bfloat16, 24, 'gpu') and applies(jnp.float16, 128, 'gpu')
  assert not applies(jnp.float32, 24, 'gpu')  # no float32 flash kernel in cuDNN
  assert not applies(jnp.bfloat16, 24, 'cpu') and not applies(jnp.bfloat16, 24, 'tpu')
  assert not applies(jnp.bfloat16, 20, 'gpu') and not applies(jnp.bfloat16, 136, 'gpu')
  monkeypatch.setenv(backend.CUDNN_ENV, '0')
  assert not applies(jnp.bfloat16, 24, 'gpu')


def test_fused_path_matches_scipy_in_values_and_gradients(monkeypatch):
  """The layout changes and the scale around jax.nn.dot_product_attention (jax's XLA
  implementation standing in for cuDNN's), against the same references as above. Float64
  operands, but jax takes that softmax in float32: hence float32 tolerances (a wrong layout
  or scale is off by O(1))."""
  _fused_path_on_the_cpu(monkeypatch)
  with enable_x64(True):
    q, k, v = (jnp.asarray(a, jnp.float64) for a in _inputs(10))
    fn = lambda *a: attention(*a, jnp.float64)
    out = fn(q, k, v)
    assert out.dtype == jnp.float64 and out.shape == SHAPE_Q
    np.testing.assert_allclose(out, _scipy_attention(*_inputs(10)), rtol=1e-5, atol=1e-6)
    cotangent = jnp.asarray(np.random.default_rng(11).normal(size=out.shape))
    per_example = jax.vmap(lambda *a: _grads(fn, *(x[None] for x in a)))(q, k, v, cotangent)
    for got, want in zip(per_example, _grads(_textbook, q, k, v, cotangent)):
      np.testing.assert_allclose(np.asarray(got)[:, 0], want, rtol=1e-5, atol=1e-6)


def test_bfloat16_fused_path_returns_float32_close_to_the_own_kernel(monkeypatch):
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(12))
  own = attention(q, k, v, jnp.bfloat16)
  _fused_path_on_the_cpu(monkeypatch)
  fused = attention(q, k, v, jnp.bfloat16)
  assert fused.dtype == jnp.float32
  np.testing.assert_allclose(fused, own, atol=5e-2)
  assert not np.array_equal(fused, own)  # the other path did run


@pytest.mark.skipif(jax.default_backend() == 'gpu', reason='a GPU with cuDNN does not refuse')
def test_cudnn_refusal_falls_back_to_the_own_kernel(monkeypatch):
  """Where cuDNN is missing (here: the CPU) jax refuses at trace time; attention says so and
  gives its own kernel's result, bit for bit."""
  monkeypatch.setattr(backend, 'cudnn_applies', lambda *a, **k: True)
  warnings = []
  monkeypatch.setattr(backend.logging, 'log_first_n', lambda *a: warnings.append(a))
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(13))
  compiled = jax.jit(lambda *a: attention(*a, jnp.bfloat16)).lower(q, k, v).compile()
  got = compiled(q, k, v)
  assert warnings and 'cuDNN' in warnings[0][1]
  assert not backend.runs_cudnn_attention(compiled)  # refused: not in the program
  monkeypatch.setattr(backend, 'cudnn_applies', lambda *a, **k: False)
  np.testing.assert_array_equal(got, jax.jit(lambda *a: attention(*a, jnp.bfloat16))(q, k, v))


def test_cost_analysis_traces_the_xla_products_not_cudnn(monkeypatch):
  """XLA cannot count FLOPs inside cuDNN's kernel: with one_block no fused call is made."""
  _fused_path_on_the_cpu(monkeypatch)
  calls = []
  fused = backend._fused
  monkeypatch.setattr(backend, '_fused', lambda *a: calls.append(1) or fused(*a))
  q, k, v = (jnp.asarray(a, jnp.float32) for a in _inputs(14))
  attention(q, k, v, jnp.bfloat16, one_block=True)
  assert not calls
  attention(q, k, v, jnp.bfloat16)
  assert calls


def test_the_cudnn_check_reads_the_compiled_program():
  class Program:
    def __init__(self, text):
      self.as_text = lambda: text
  call = 'custom-call(...), custom_call_target="__cudnn$fmhaSoftmax"'
  assert backend.runs_cudnn_attention(Program(call))
  assert not backend.runs_cudnn_attention(Program('dot(...)'))
