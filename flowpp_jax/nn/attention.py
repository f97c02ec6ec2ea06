"""Multi-head dot-product attention, softmax(q k^T / sqrt(d)) v, with a lean backward pass.

The conditioner's self-attention (Flow++ section 3.3) runs over every position of the
feature map, so its [T, T] weights are the largest tensors of the model: 8 MiB per image and
block at CIFAR-10's 512 positions and 4 heads. Reverse-mode autodiff of the plain formula
stores those weights for the backward pass and makes several more passes over [T, T] arrays
(one of them a materialised broadcast). Here the forward pass keeps only the output and each
row's log-sum-exp, and the backward pass recomputes the weights from q and k and uses the
identity rowsum(p * dp) = rowsum(dout * out) (the gradient of Dao et al. 2022's
FlashAttention): the same gradient with [T, d] residuals instead of [T, T], and fewer passes
over [T, T] (measured: see README, "Performance").

Both passes can walk the queries in chunks (``query_chunk``), a loop whose body holds one
[chunk, S] block of weights per head: on the CPU that block is reused from iteration to
iteration while it is hot in cache, where the whole [T, S] array is fresh memory that the
kernel has to fault in and zero at every call (measured 2-4x slower; see README).

Arrays are [B, heads, T, d]. The products run in the compute dtype with float32 results;
the softmax statistics and the gradient's elementwise terms are float32 whatever it is
(float64 when the products are: the Jacobian tests).
"""
import contextlib
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.dtypes import at_least_float32

# Weights per head held at once by the chunked loop on the CPU: 64K floats (256 KiB), a
# [128, 512] block at CIFAR-10's 512 positions (chunks of 64 and 256 measured slower).
_CPU_BLOCK_ELEMENTS = 1 << 16
_chunking = [True]  # default_query_chunk's switch; see unchunked()


def _matmul(spec, a, b, dtype):
  """einsum with operands in ``dtype`` and the result in at least float32."""
  out_dtype = at_least_float32(dtype)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=out_dtype).astype(out_dtype)


def default_query_chunk(num_queries: int, num_keys: int) -> Optional[int]:
  """The chunk ``attention`` uses when given none: on the CPU the largest divisor of
  ``num_queries`` whose [chunk, num_keys] block stays within _CPU_BLOCK_ELEMENTS; elsewhere
  None (one block: GPU and TPU compilers fuse the passes and have the bandwidth)."""
  if not _chunking[-1] or jax.default_backend() != 'cpu':
    return None
  chunk = max(1, min(num_queries, _CPU_BLOCK_ELEMENTS // num_keys))
  while num_queries % chunk:
    chunk -= 1
  return chunk


@contextlib.contextmanager
def unchunked():
  """Within it, ``attention`` traces as one block by default, on every backend.

  For XLA's cost analysis, which counts a loop body once: the benchmark counts FLOPs on a
  program traced under it (the same function without the loop).
  """
  _chunking.append(False)
  try:
    yield
  finally:
    _chunking.pop()


def _chunks(x, chunk):
  """[B, h, T, e] -> [T / chunk, B, h, chunk, e]: the loop's leading axis."""
  b, h, t, e = x.shape
  return jnp.moveaxis(x.reshape(b, h, t // chunk, chunk, e), 2, 0)


def _unchunk(x):
  n, b, h, chunk, e = x.shape
  return jnp.moveaxis(x, 0, 2).reshape(b, h, n * chunk, e)


def _by_chunks(body, init, xs, chunk, num_queries):
  """lax.scan of ``body`` over query chunks of the [B, h, T, .] arrays ``xs`` (one chunk:
  a plain call). Returns (carry, stacked outputs back in [B, h, T, .] form)."""
  if chunk is None or chunk >= num_queries:
    return body(init, xs)
  carry, out = lax.scan(body, init, tuple(_chunks(x, chunk) for x in xs))
  return carry, jax.tree_util.tree_map(_unchunk, out)


def _forward(q, k, v, dtype, chunk):
  """(output [B, h, T, d], row log-sum-exp of the scores [B, h, T, 1]), at least float32."""
  q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)  # on [T, d], not on the [T, S] scores

  def block(_, xs):
    (q_block,) = xs
    scores = _matmul('bhtd,bhsd->bhts', q_block, k, dtype)
    # The row max only keeps exp in range: the weights do not depend on it.
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - row_max)
    row_sum = jnp.sum(weights, axis=-1, keepdims=True)
    # Normalising the [T, d] product instead of the [T, S] weights saves a pass. (Summing
    # by a ones column appended to v measured 2x slower on XLA:CPU: an odd width of 25.)
    out = _matmul('bhts,bhsd->bhtd', weights, v, dtype)
    return None, (out / row_sum, row_max + jnp.log(row_sum))

  _, (out, lse) = _by_chunks(block, None, (q,), chunk, q.shape[-2])
  return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, dtype, chunk):
  return _forward(q, k, v, dtype, chunk)[0]


def _attention_fwd(q, k, v, dtype, chunk):
  out, lse = _forward(q, k, v, dtype, chunk)
  return out, (q, k, v, out, lse)


def _attention_bwd(dtype, chunk, residuals, dout):
  q, k, v, out, lse = residuals
  dout = dout.astype(out.dtype)
  scale = 1 / jnp.sqrt(q.shape[-1]).astype(out.dtype)
  keys_first = lambda x: jnp.swapaxes(x, -1, -2)  # [B, h, T, 1] -> [B, h, 1, T]

  # Everything [T, S] is formed transposed, [S, T]: then the products for dv and dk contract
  # its last axis, which XLA:CPU runs as a fast matmul; contracting its first axis (the
  # [T, S] layout) fell back to a kernel measured 5x slower.
  def block(carry, xs):
    dk, dv = carry
    q_block, out_block, lse_block, dout_block = xs
    # The forward pass's softmax, recomputed.
    weights = jnp.exp(_matmul('bhsd,bhtd->bhst', k, q_block * scale, dtype)
                      - keys_first(lse_block))
    dv = dv + _matmul('bhst,bhtd->bhsd', weights, dout_block, dtype)
    # Softmax backward: dscores = w * (dw - rowsum(w * dw)), and rowsum(w * dw) =
    # rowsum(dout * out), a [T, d] reduction in place of a [T, S] one.
    row_dot = keys_first(jnp.sum(dout_block * out_block, axis=-1, keepdims=True))
    dscores = weights * (_matmul('bhsd,bhtd->bhst', v, dout_block, dtype) - row_dot) * scale
    dk = dk + _matmul('bhst,bhtd->bhsd', dscores, q_block, dtype)
    return (dk, dv), _matmul('bhst,bhsd->bhtd', dscores, k, dtype)

  zeros = jnp.zeros(k.shape, out.dtype)
  (dk, dv), dq = _by_chunks(block, (zeros, zeros), (q, out, lse, dout), chunk, q.shape[-2])
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, dtype=jnp.float32, query_chunk: Optional[int] = -1):
  """softmax(q k^T / sqrt(d)) v over the last-but-one axis.

  q [B, heads, T, d], k and v [B, heads, S, d] -> [B, heads, T, d] in at least float32.
  ``dtype`` is the dtype of the matrix products' operands (float32, or bfloat16 to halve
  them; float64 in the Jacobian tests). ``query_chunk`` queries are processed at a time; it
  must divide T. None: all at once; -1 (the default): ``default_query_chunk``.
  """
  t = q.shape[-2]
  if query_chunk == -1:
    query_chunk = default_query_chunk(t, k.shape[-2])
  if query_chunk is not None and (query_chunk < 1 or t % query_chunk):
    raise ValueError(f'query_chunk={query_chunk} must be a positive divisor of T={t}')
  return _attention(q, k, v, dtype, query_chunk)
