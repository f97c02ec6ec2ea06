"""Multi-head dot-product attention, softmax(q k^T / sqrt(d)) v, with a lean backward pass.

The conditioner's self-attention (Flow++ section 3.3) runs over every position of the
feature map, so its [T, T] weights are the largest tensors of the model. Reverse-mode autodiff
of the plain formula stores them for the backward pass. Here the forward pass keeps only the
output (and, where asked, each row's log-sum-exp), and the backward pass recomputes the weights
from q and k and uses the identity rowsum(p * dp) = rowsum(dout * out), as FlashAttention
does (Dao et al. 2022): the same gradient with [T, d] residuals instead of [T, T].

Both passes can walk the queries in chunks, a loop whose body holds one [chunk, S] block of
weights per head; the backward pass, which keeps five such blocks alive where the forward
keeps two, may take smaller ones. Which chunks, and whether to keep the log-sum-exp, is the
backend's choice (``backend.attention``). The products run in the compute dtype with float32
results; the softmax statistics and the gradient's elementwise terms are float32 whatever it
is (float64 when the products are).
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.dtypes import at_least_float32


def _matmul(spec, a, b, dtype):
  """einsum with operands in ``dtype`` and the result in at least float32."""
  out_dtype = at_least_float32(dtype)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=out_dtype).astype(out_dtype)


def _chunks(x, chunk):
  """[N, T, e] -> [T / chunk, N, chunk, e]: the loop's leading axis."""
  n, t, e = x.shape
  return jnp.moveaxis(x.reshape(n, t // chunk, chunk, e), 1, 0)


def _unchunk(x, axis):
  """Joins the chunks of the loop's leading axis along ``axis`` (-2 or -1) of each chunk:
  [T / chunk, N, chunk, e] -> [N, T, e] (axis -2), [T / chunk, N, e, chunk] -> [N, e, T] (-1)."""
  n_chunks, n, a, b = x.shape
  x = jnp.moveaxis(x, 0, axis - 1)  # the chunk index just ahead of the axis it joins
  return x.reshape((n, n_chunks * a, b) if axis == -2 else (n, a, n_chunks * b))


def _by_chunks(body, init, xs, chunk, num_queries, out_axis=-2):
  """lax.scan of ``body`` over query chunks of the [N, T, .] arrays ``xs`` (one chunk: a
  plain call). Returns (carry, outputs with their chunks joined along ``out_axis``: -2 for
  [N, T, .] outputs, -1 for [N, ., T])."""
  if chunk is None or chunk >= num_queries:
    return body(init, xs)
  carry, out = lax.scan(body, init, tuple(_chunks(x, chunk) for x in xs))
  return carry, jax.tree_util.tree_map(lambda x: _unchunk(x, out_axis), out)


def _forward(q, k, v, dtype, chunk):
  """(output [N, T, d], row log-sum-exp of the scores [N, T, 1]), at least float32."""
  q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)  # on [T, d], not on the [T, S] scores

  def block(_, xs):
    (q_block,) = xs
    scores = _matmul('ntd,nsd->nts', q_block, k, dtype)
    # The row max only keeps exp in range: the weights do not depend on it.
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.exp(scores - row_max)
    row_sum = jnp.sum(weights, axis=-1, keepdims=True)
    # Normalising the [T, d] product instead of the [T, S] weights saves a pass.
    out = _matmul('nts,nsd->ntd', weights, v, dtype)
    return None, (out / row_sum, row_max + jnp.log(row_sum))

  return _by_chunks(block, None, (q,), chunk, q.shape[-2])[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _attention(q, k, v, dtype, chunk, backward_chunk, save_lse):
  return _forward(q, k, v, dtype, chunk)[0]


def _attention_fwd(q, k, v, dtype, chunk, backward_chunk, save_lse):
  # save_lse=False: only the output is kept (a second output keeps XLA:CPU from fusing a
  # chunk into one kernel); the backward pass recomputes each row's max and sum.
  out, lse = _forward(q, k, v, dtype, chunk)
  return out, (q, k, v, out, lse if save_lse else None)


def _attention_bwd(dtype, chunk, backward_chunk, save_lse, residuals, dout):
  q, k, v, out, lse = residuals
  dout = dout.astype(out.dtype)
  scale = 1 / jnp.sqrt(q.shape[-1]).astype(out.dtype)
  keys_first = lambda x: jnp.swapaxes(x, -1, -2)  # [N, T, 1] -> [N, 1, T]

  # Everything [T, S] is formed transposed, [S, T], so that the products for dv and dk
  # contract its last axis, which XLA:CPU runs as a fast matmul.
  def block(carry, xs):
    dk, dv = carry
    q_block, out_block, dout_block = xs[:3]
    # The forward pass's softmax, recomputed: from its saved log-sum-exp, or from the row max
    # and sum over the keys (axis -2 of the [S, T] block).
    scores = _matmul('nsd,ntd->nst', k, q_block * scale, dtype)
    if save_lse:
      weights = jnp.exp(scores - keys_first(xs[3]))
    else:
      unnormalised = jnp.exp(scores - jnp.max(scores, axis=-2, keepdims=True))
      weights = unnormalised * (1 / jnp.sum(unnormalised, axis=-2, keepdims=True))
    dv = dv + _matmul('nst,ntd->nsd', weights, dout_block, dtype)
    # Softmax backward: dscores = w * (dw - rowsum(w * dw)), and rowsum(w * dw) =
    # rowsum(dout * out), a [T, d] reduction in place of a [T, S] one.
    row_dot = keys_first(jnp.sum(dout_block * out_block, axis=-1, keepdims=True))
    dscores = weights * (_matmul('nsd,ntd->nst', v, dout_block, dtype) - row_dot) * scale
    dk = dk + _matmul('nst,ntd->nsd', dscores, q_block, dtype)
    # dq, transposed: [d, S] x [S, T], with k^T formed outside the loop. As dscores^T k the
    # product would contract the first axis of dscores, which XLA:CPU runs on a slow dot.
    return (dk, dv), _matmul('nds,nst->ndt', k_t, dscores, dtype)

  k_t = jnp.swapaxes(k, -1, -2)  # [N, d, S]
  zeros = jnp.zeros(k.shape, out.dtype)
  xs = (q, out, dout) + ((lse,) if save_lse else ())
  (dk, dv), dq_t = _by_chunks(block, (zeros, zeros), xs, backward_chunk, q.shape[-2],
                              out_axis=-1)
  dq = jnp.swapaxes(dq_t, -1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def flash_attention(q, k, v, dtype, query_chunk, save_lse: bool, backward_chunk):
  """softmax(q k^T / sqrt(d)) v: q [B, heads, T, d], k and v [B, heads, S, d] ->
  [B, heads, T, d] in at least float32, with the lean backward pass above.

  ``dtype``: the products' operands. ``query_chunk``: queries per loop iteration of the
  forward pass, a divisor of T, or None for one block; ``backward_chunk``: the same for the
  backward pass. ``save_lse``: whether the backward pass reads each row's log-sum-exp from
  the forward pass (True) or recomputes its max and sum (False).
  """
  # One batch axis, B * heads: vmapped over examples, the model hands over [examples, 1,
  # heads], and a unit batch axis made XLA:CPU relayout and copy every [T, S] product.
  flat = lambda x: x.reshape(-1, *x.shape[-2:])
  out = _attention(flat(q), flat(k), flat(v), dtype, query_chunk, backward_chunk, save_lse)
  return out.reshape(q.shape[:-1] + v.shape[-1:])
