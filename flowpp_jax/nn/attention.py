"""Multi-head dot-product attention, softmax(q k^T / sqrt(d)) v, with a lean backward pass.

The conditioner's self-attention (Flow++ section 3.3) runs over every position of the
feature map, so its [T, T] weights are the largest tensors of the model: 8 MiB per image and
block at CIFAR-10's 512 positions and 4 heads. Reverse-mode autodiff of the plain formula
stores those weights for the backward pass and makes several more passes over [T, T] arrays
(one of them a materialised broadcast). Here the forward pass keeps only the output (and, off
the CPU, each row's log-sum-exp, as FlashAttention does; see _attention_fwd), and the backward
pass recomputes the weights from q and k and uses the identity rowsum(p * dp) =
rowsum(dout * out) (the gradient of Dao et al. 2022's FlashAttention): the same gradient with
[T, d] residuals instead of [T, T], and fewer passes over [T, T] (measured: see README,
"Performance").

Both passes can walk the queries in chunks (``query_chunk``), a loop whose body holds one
[chunk, S] block of weights per head: on the CPU that block is reused from iteration to
iteration while it is hot in cache, where the whole [T, S] array is fresh memory that the
kernel has to fault in and zero at every call (measured 2-4x slower; see README).

``attention`` takes [B, heads, T, d] and works on [B * heads, T, d] (see there). The products
run in the compute dtype with float32 results; the softmax statistics and the gradient's
elementwise terms are float32 whatever it is (float64 when the products are: the Jacobian
tests).

On an NVIDIA GPU with 16-bit products, ``attention`` hands the whole computation to cuDNN's
fused flash attention instead (``jax.nn.dot_product_attention``; see ``cudnn_applies``). It
keeps the [T, S] weights on chip, where the XLA program above writes them to device memory
and reads them back (4 MiB per image and block on CIFAR-10 in float32). At CIFAR-10's sizes
that traffic, not the products, is what an H100 would spend the attention's time on: an
estimate, not yet measured on a GPU (README, "Performance").
"""
import contextlib
import functools
import os
from typing import Optional

from absl import logging

import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.dtypes import at_least_float32

# Weights per head held at once by the chunked loop on the CPU: 64K floats (256 KiB), a
# [128, 512] block at CIFAR-10's 512 positions (chunks of 64 and 256 measured slower).
_CPU_BLOCK_ELEMENTS = 1 << 16
_chunking = [True]  # default_query_chunk's switch; see unchunked()
CUDNN_ENV = 'FLOWPP_CUDNN_ATTENTION'  # '0': never cuDNN's fused attention (see cudnn_applies)
_FUSED_IMPLEMENTATION = 'cudnn'  # jax.nn.dot_product_attention's; the tests run 'xla' on the CPU
_cudnn_traces = [0]  # see cudnn_traces()


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


def cudnn_applies(dtype, head_dim: int, backend: Optional[str] = None) -> bool:
  """Whether ``attention`` asks cuDNN's fused flash attention for these products: on a GPU
  (``backend``, default JAX's), with bfloat16 or float16 operands (cuDNN has no float32 flash
  kernel) and a head dimension it takes (a multiple of 8, at most 128), unless the
  environment sets FLOWPP_CUDNN_ATTENTION=0. Where cuDNN then refuses (no cuDNN, as on ROCm;
  one too old), ``attention`` logs why and runs its own kernel."""
  backend = backend or jax.default_backend()
  return (backend == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and os.environ.get(CUDNN_ENV) != '0')


def cudnn_traces() -> int:
  """How many ``attention`` calls this process has handed to cuDNN, counted as they are
  traced: the benchmark reports whether the program it compiled runs cuDNN's kernel."""
  return _cudnn_traces[0]


def _fused(q, k, v, dtype, implementation):
  """jax.nn.dot_product_attention on [B, heads, T, d] inputs (it takes [B, T, heads, d]) with
  operands in ``dtype``: [B, heads, T, d] in at least float32, like ``_attention``'s."""
  btnh = lambda x: jnp.swapaxes(x, 1, 2).astype(dtype)
  out = jax.nn.dot_product_attention(btnh(q), btnh(k), btnh(v), implementation=implementation)
  return jnp.swapaxes(out, 1, 2).astype(at_least_float32(dtype))


@contextlib.contextmanager
def unchunked():
  """Within it, ``attention`` traces as one block of XLA operations by default, on every
  backend: no query loop and no cuDNN call.

  For XLA's cost analysis, which counts a loop body once and cannot see into cuDNN's kernel:
  the benchmark counts FLOPs on a program traced under it (the same products, counted whole).
  """
  _chunking.append(False)
  try:
    yield
  finally:
    _chunking.pop()


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
    # Normalising the [T, d] product instead of the [T, S] weights saves a pass. (Summing
    # by a ones column appended to v measured 2x slower on XLA:CPU: an odd width of 25.)
    out = _matmul('nts,nsd->ntd', weights, v, dtype)
    return None, (out / row_sum, row_max + jnp.log(row_sum))

  return _by_chunks(block, None, (q,), chunk, q.shape[-2])[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(q, k, v, dtype, chunk, save_lse):
  return _forward(q, k, v, dtype, chunk)[0]


def _attention_fwd(q, k, v, dtype, chunk, save_lse):
  # save_lse=False (the CPU): only the output is kept. With the log-sum-exp as a second
  # output, XLA:CPU no longer compiles a query chunk's products, max, exp and sum into one
  # kernel, and the unfused chunk took twice as long (jax 0.10.2); the backward pass then
  # recomputes each row's max and sum, fused into its scores product (README, "Performance").
  out, lse = _forward(q, k, v, dtype, chunk)
  return out, (q, k, v, out, lse if save_lse else None)


def _attention_bwd(dtype, chunk, save_lse, residuals, dout):
  q, k, v, out, lse = residuals
  dout = dout.astype(out.dtype)
  scale = 1 / jnp.sqrt(q.shape[-1]).astype(out.dtype)
  keys_first = lambda x: jnp.swapaxes(x, -1, -2)  # [N, T, 1] -> [N, 1, T]

  # Everything [T, S] is formed transposed, [S, T]: then the products for dv and dk contract
  # its last axis, which XLA:CPU runs as a fast matmul; contracting its first axis (the
  # [T, S] layout) fell back to a kernel measured 5x slower.
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
    # dq, transposed: [d, S] x [S, T]. Written as dscores^T k, the product contracts the
    # first axis of dscores and XLA:CPU runs it on its generic dot, the slowest product of
    # the step (jax 0.12: 3.3 ms a chunk against 1-1.8 ms for the others). k^T is formed
    # outside the loop, where XLA cannot fold the transpose back into the product.
    return (dk, dv), _matmul('nds,nst->ndt', k_t, dscores, dtype)

  k_t = jnp.swapaxes(k, -1, -2)  # [N, d, S]
  zeros = jnp.zeros(k.shape, out.dtype)
  xs = (q, out, dout) + ((lse,) if save_lse else ())
  (dk, dv), dq_t = _by_chunks(block, (zeros, zeros), xs, chunk, q.shape[-2], out_axis=-1)
  dq = jnp.swapaxes(dq_t, -1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, dtype=jnp.float32, query_chunk: Optional[int] = -1,
              save_lse: Optional[bool] = None):
  """softmax(q k^T / sqrt(d)) v over the last-but-one axis.

  q [B, heads, T, d], k and v [B, heads, S, d] -> [B, heads, T, d] in at least float32.
  ``dtype`` is the dtype of the matrix products' operands (float32, or bfloat16 to halve
  them; float64 in the Jacobian tests). ``query_chunk`` queries are processed at a time; it
  must divide T. None: all at once; -1 (the default): ``default_query_chunk``. ``save_lse``:
  whether the backward pass reads each row's log-sum-exp from the forward pass (True) or
  recomputes its max and sum (False); None: False on the CPU, True elsewhere. Where
  ``cudnn_applies``, cuDNN's fused attention runs instead and these two do not apply.
  """
  t = q.shape[-2]
  if query_chunk == -1:
    query_chunk = default_query_chunk(t, k.shape[-2])
  if query_chunk is not None and (query_chunk < 1 or t % query_chunk):
    raise ValueError(f'query_chunk={query_chunk} must be a positive divisor of T={t}')
  if _chunking[-1] and cudnn_applies(dtype, q.shape[-1]):
    try:
      out = _fused(q, k, v, dtype, _FUSED_IMPLEMENTATION)
      _cudnn_traces[0] += 1
      return out
    except (NotImplementedError, RuntimeError, ValueError) as e:  # jax's checks, at trace time
      logging.log_first_n(logging.WARNING, 'cuDNN fused attention not available (%s): '
                          "running flowpp_jax's own attention kernel", 1, e)
  # One batch axis, B * heads. The trainer and evaluator vmap the model over examples, each a
  # batch of one, so a [B, heads] pair of batch axes arrives as [examples, 1, heads]: XLA:CPU
  # then gave the products' [T, S] results a layout with the unit axis moved and copied them
  # back (six [T, S]-sized copies in the cifar10 forward pass, none with one batch axis;
  # cifar10 forward at batch 8 on jax 0.10.2: 2.11 -> 1.62 s, see README "Performance").
  flat = lambda x: x.reshape(-1, *x.shape[-2:])
  if save_lse is None:
    save_lse = jax.default_backend() != 'cpu'
  out = _attention(flat(q), flat(k), flat(v), dtype, query_chunk, bool(save_lse))
  return out.reshape(q.shape[:-1] + v.shape[-1:])
