"""Multi-head dot-product attention, softmax(q k^T / sqrt(d)) v, with a lean backward pass.

The conditioner's self-attention (Flow++ section 3.3) runs over every position of the
feature map, so its [T, T] weights are the largest tensors of the model: 8 MiB per image and
block at CIFAR-10's 512 positions and 4 heads. Reverse-mode autodiff of the plain formula
stores those weights for the backward pass and makes several more passes over [T, T] arrays
(one of them a materialised broadcast). Here the forward pass keeps only the output and each
row's log-sum-exp, and the backward pass recomputes the weights from q and k and uses the
identity rowsum(p * dp) = rowsum(dout * out) (the gradient of Dao et al. 2022's
FlashAttention, without its tiling): the same gradient with [T, d] residuals instead of
[T, T], and fewer passes over [T, T] (measured: see README, "Performance").

Arrays are [B, heads, T, d]. The products run in the compute dtype with float32 results;
the softmax statistics and the gradient's elementwise terms are float32 whatever it is
(float64 when the products are: the Jacobian tests).
"""
import functools

import jax
import jax.numpy as jnp

from flowpp_jax.dtypes import at_least_float32


def _matmul(spec, a, b, dtype):
  """einsum with operands in ``dtype`` and the result in at least float32."""
  out_dtype = at_least_float32(dtype)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=out_dtype).astype(out_dtype)


def _scores(q, k, dtype):
  """q [B, h, T, d], k [B, h, S, d] -> q k^T / sqrt(d), at least float32 [B, h, T, S]."""
  return _matmul('bhtd,bhsd->bhts', q, k, dtype) / jnp.sqrt(q.shape[-1])


def _forward(q, k, v, dtype):
  """(output [B, h, T, d], row log-sum-exp of the scores [B, h, T, 1]), at least float32."""
  scores = _scores(q, k, dtype)
  # The row max only keeps exp in range: the weights do not depend on it.
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  unnormalised = jnp.exp(scores - row_max)
  row_sum = jnp.sum(unnormalised, axis=-1, keepdims=True)
  # Normalising the [T, d] product instead of the [T, S] weights saves a pass over the latter.
  out = _matmul('bhts,bhsd->bhtd', unnormalised, v, dtype) / row_sum
  return out, row_max + jnp.log(row_sum)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q, k, v, dtype=jnp.float32):
  """softmax(q k^T / sqrt(d)) v over the last-but-one axis.

  q [B, heads, T, d], k and v [B, heads, S, d] -> [B, heads, T, d] in at least float32.
  ``dtype`` is the dtype of the matrix products' operands (float32, or bfloat16 to halve
  them; float64 in the Jacobian tests).
  """
  return _forward(q, k, v, dtype)[0]


def _attention_fwd(q, k, v, dtype):
  out, lse = _forward(q, k, v, dtype)
  return out, (q, k, v, out, lse)


def _attention_bwd(dtype, residuals, dout):
  q, k, v, out, lse = residuals
  dout = dout.astype(out.dtype)
  weights = jnp.exp(_scores(q, k, dtype) - lse)  # the forward pass's softmax, recomputed
  dv = _matmul('bhts,bhtd->bhsd', weights, dout, dtype)
  # Softmax backward: dscores = w * (dw - rowsum(w * dw)), and rowsum(w * dw) = rowsum(dout *
  # out), a [T, d] reduction in place of a [T, S] one. dw - rowsum is one product of
  # [dout, -rowsum] and [v, 1]: XLA:CPU fused the separate subtraction, with the reduction,
  # into the product and ran it 6x slower than the product alone (measured in the CIFAR-10
  # train step).
  row_dot = jnp.sum(dout * out, axis=-1, keepdims=True)
  dweights_centred = _matmul('bhtd,bhsd->bhts', jnp.concatenate([dout, -row_dot], -1),
                             jnp.concatenate([v, jnp.ones_like(v[..., :1])], -1), dtype)
  dscores = weights * dweights_centred / jnp.sqrt(q.shape[-1])
  dq = _matmul('bhts,bhsd->bhtd', dscores, k, dtype)
  dk = _matmul('bhts,bhtd->bhsd', dscores, q, dtype)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


attention.defvjp(_attention_fwd, _attention_bwd)
