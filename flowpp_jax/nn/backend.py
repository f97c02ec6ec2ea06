"""What one backend needs and the others do not, behind one switch, ``on_cpu()``.

The layers (``layers.py``, ``conditioner.py``) hold the paper's math and call the four
functions here; each keeps the math and changes only how XLA is asked for it:
- ``conv2d``: on the CPU its gradient is written out, because XLA:CPU runs the backward
  convolutions that autodiff emits inside a loop body (``model.scan_layers``) through a slow
  generic emitter.
- ``plain_array``: on the CPU a conv bias goes through an exact product with the identity,
  because XLA:CPU compiles a scanned parameter slice fused into two elementwise slices as
  scalar code.
- ``bernoulli``: dropout's masks, jax.random.bernoulli's bit for bit; on the CPU with the
  threefry hash written out, because XLA:CPU runs jax's as a loop of five passes over the
  mask.
- ``attention``: on an NVIDIA GPU with 16-bit operands, cuDNN's fused flash attention;
  everywhere else flowpp_jax's kernel (``attention.py``), which on the CPU walks the queries
  in cache-sized chunks (smaller ones in the backward pass) and recomputes the softmax
  statistics in the backward pass. Its ``one_block`` argument (the model's
  ``one_block_attention`` field) asks for one block of XLA operations instead, for XLA's cost
  analysis.
Every choice is made from the arguments and the backend alone, so that a jitted function's
cached program is the one its arguments ask for. The one exception is ``lowering_for``, for a
process that compiles for another platform than its own (the TPU pre-flight of
``bench --target``) and traces nothing for its own.
The measurements behind each: docs/performance.md.
"""
import contextlib
import contextvars
import math
import os
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
from jax import lax

from flowpp_jax.dtypes import at_least_float32
from flowpp_jax.nn.attention import flash_attention

# Weights per head held at once by the chunked attention on the CPU: 64K floats (256 KiB), a
# [128, 512] block at CIFAR-10's 512 positions, in the forward pass; half as many in the
# backward pass, whose loop body works on five such blocks (on a Zen 4 core 16% faster at 256
# positions, the same at 512: tools/kernel_bench, docs/performance.md).
_CPU_BLOCK_ELEMENTS = 1 << 16
_CPU_BACKWARD_BLOCK_ELEMENTS = 1 << 15
CUDNN_ENV = 'FLOWPP_CUDNN_ATTENTION'  # '0': never cuDNN's fused attention (see cudnn_applies)
_FUSED_IMPLEMENTATION = 'cudnn'  # jax.nn.dot_product_attention's; the tests run 'xla' on the CPU
_CUDNN_CALL = '__cudnn$fmha'  # the custom calls of cuDNN's fused attention in XLA's programs


_TARGET = contextvars.ContextVar('flowpp_jax_target_platform', default=None)


@contextlib.contextmanager
def lowering_for(platform: str):
  """Inside, the choices below are those of ``platform`` ('tpu', 'gpu', 'cpu') instead of
  JAX's default backend: for tracing programs compiled for devices of another platform
  (``jax.experimental.topologies``). jax caches traces by function and arguments, not by
  this setting, so a process that uses it should trace nothing for its own platform."""
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def platform() -> str:
  """The platform programs are traced for: ``lowering_for``'s, else JAX's default backend."""
  return _TARGET.get() or jax.default_backend()


def on_cpu() -> bool:
  """Whether programs are traced for the CPU: the one switch of this module."""
  return platform() == 'cpu'


# -- Convolution ----------------------------------------------------------------------------

def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@jax.custom_vjp
def _conv_written_out_grad(x, w):
  return _conv(x, w)


def _conv_written_out_grad_fwd(x, w):
  return _conv(x, w), (x, w)


def _conv_written_out_grad_bwd(residuals, dy):
  x, w = residuals
  k, h, width = w.shape[0], x.shape[1], x.shape[2]
  # d/dx: the same 'SAME' convolution of dy with the kernel flipped in space and its in/out
  # channels swapped (odd k: the padding is symmetric).
  dx = _conv(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  # d/dw[i, j] = sum over batch and positions of x shifted by (i, j) times dy: k*k matmuls.
  # Each is formed transposed, dy^T x, so that x's positions are the product's inner axis and
  # x is not transposed k*k times; x is shifted along W once per j (k copies), and the
  # shifts along H are then contiguous slices. 23% faster on a Zen 4 core than x^T dy on k*k
  # shifted copies (docs/performance.md).
  pad = k // 2
  x_pad = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  acc = at_least_float32(w.dtype)
  dw_t = []  # [k (j), k (i), Cout, Cin]
  for j in range(k):
    x_j = x_pad[:, :, j:j + width]
    dw_t.append(jnp.stack([jnp.einsum('bhwo,bhwc->oc', dy, x_j[:, i:i + h],
                                      preferred_element_type=acc) for i in range(k)]))
  dw = jnp.transpose(jnp.stack(dw_t), (1, 0, 3, 2))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_written_out_grad.defvjp(_conv_written_out_grad_fwd, _conv_written_out_grad_bwd)


def conv2d(x, w):
  """'SAME', stride-1 convolution: x [B, H, W, Cin], w [k, k, Cin, Cout] (k odd) ->
  [B, H, W, Cout]. On the CPU its gradient is written out: the input gradient as a forward
  convolution with the flipped kernel, the kernel gradient as k*k matmuls; elsewhere
  autodiff's convolutions (cuDNN, TPU)."""
  if w.shape[0] % 2 != 1 or w.shape[0] != w.shape[1]:
    raise ValueError(f'conv2d takes square kernels of odd size, got {w.shape[:2]}')
  return _conv_written_out_grad(x, w) if on_cpu() else _conv(x, w)


def plain_array(b):
  """``b`` [F], unchanged; on the CPU as the product b I with the identity [F, F], which is
  exact (b_j * 1 plus zeros) and gives the fusions that read it an ordinary array."""
  if not on_cpu():
    return b
  return jnp.dot(b, jnp.eye(b.shape[-1], dtype=b.dtype), precision=lax.Precision.HIGHEST)


# -- Dropout's masks -------------------------------------------------------------------------

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _threefry2x32(k1, k2, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the hash of jax's default PRNG, in
  one expression: uint32 key words k1, k2 and counter words x0, x1 -> two uint32 words."""
  ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(_THREEFRY_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _THREEFRY_ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r)))
    x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def _written_out_bernoulli_applies(key, shape) -> bool:
  """Whether ``bernoulli``'s own hash gives jax.random.bernoulli's bits: a raw uint32[2]
  key of the threefry PRNG with partitionable counters (jax's defaults), float32 draws (x64
  off) and fewer than 2^32 of them."""
  return (on_cpu() and key.dtype == jnp.uint32 and key.shape == (2,)
          and jax.config.jax_default_prng_impl == 'threefry2x32'
          and jax.config.jax_threefry_partitionable and not jax.config.jax_enable_x64
          and math.prod(shape) < 2**32)


def bernoulli(key, p: float, shape):
  """jax.random.bernoulli(key, p, shape), bit for bit: bool ``shape``, True with
  probability ``p``. On the CPU, for jax's default keys, the same threefry hash of the same
  counters, written out so that XLA fuses it into one pass over the mask; jax lowers it there
  as a five-iteration loop, each iteration a pass over the whole mask."""
  if not _written_out_bernoulli_applies(key, shape):
    return jax.random.bernoulli(key, p, shape)
  # jax's counters: the flat index as two uint32 words, high (0 below 2^32) and low.
  low = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  x0, x1 = _threefry2x32(key[0], key[1], jnp.zeros_like(low), low)
  # jax.random.uniform's float32 from 32 bits: 23 of them as the mantissa of [1, 2), minus 1.
  mantissa = ((x0 ^ x1) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
  uniform = lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1)
  return jnp.maximum(jnp.float32(0), uniform) < p


# -- Attention ------------------------------------------------------------------------------

def default_query_chunk(num_queries: int, num_keys: int,
                        backward: bool = False) -> Optional[int]:
  """The query chunk ``attention`` uses when given none, for its forward pass or its
  ``backward`` pass: on the CPU the largest divisor of ``num_queries`` whose
  [chunk, num_keys] block stays within _CPU_BLOCK_ELEMENTS (backward:
  _CPU_BACKWARD_BLOCK_ELEMENTS); elsewhere None (one block: GPU and TPU compilers fuse the
  passes and have the bandwidth)."""
  if not on_cpu():
    return None
  budget = _CPU_BACKWARD_BLOCK_ELEMENTS if backward else _CPU_BLOCK_ELEMENTS
  chunk = max(1, min(num_queries, budget // num_keys))
  while num_queries % chunk:
    chunk -= 1
  return chunk


def cudnn_applies(dtype, head_dim: int, backend: Optional[str] = None) -> bool:
  """Whether ``attention`` asks cuDNN's fused flash attention for these products: on a GPU
  (``backend``, default JAX's), with bfloat16 or float16 operands (cuDNN has no float32 flash
  kernel) and a head dimension it takes (a multiple of 8, at most 128), unless the
  environment sets FLOWPP_CUDNN_ATTENTION=0. Where cuDNN then refuses (no cuDNN, as on ROCm;
  one too old), ``attention`` logs why and runs its own kernel."""
  backend = backend or platform()
  return (backend == 'gpu' and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and os.environ.get(CUDNN_ENV) != '0')


def runs_cudnn_attention(compiled) -> bool:
  """Whether a compiled program (``jax.jit(f).lower(...).compile()``) calls cuDNN's fused
  attention: the benchmark reports which kernel its programs run."""
  return _CUDNN_CALL in compiled.as_text()


def _fused(q, k, v, dtype, implementation):
  """jax.nn.dot_product_attention on [B, heads, T, d] inputs (it takes [B, T, heads, d]) with
  operands in ``dtype``: [B, heads, T, d] in at least float32, like ``flash_attention``'s."""
  btnh = lambda x: jnp.swapaxes(x, 1, 2).astype(dtype)
  out = jax.nn.dot_product_attention(btnh(q), btnh(k), btnh(v), implementation=implementation)
  return jnp.swapaxes(out, 1, 2).astype(at_least_float32(dtype))


def attention(q, k, v, dtype=jnp.float32, query_chunk: Optional[int] = -1,
              save_lse: Optional[bool] = None, one_block: bool = False):
  """softmax(q k^T / sqrt(d)) v over the last-but-one axis: q [B, heads, T, d], k and v
  [B, heads, S, d] -> [B, heads, T, d] in at least float32.

  ``dtype`` is the dtype of the products' operands (float32, bfloat16, or float64 in the
  Jacobian tests). ``query_chunk`` (a divisor of T for both passes; None: all at once; -1:
  ``default_query_chunk`` for each pass) and ``save_lse`` (None: False on the CPU, True
  elsewhere) go to ``flash_attention``; where ``cudnn_applies``, cuDNN's fused attention runs
  instead.
  ``one_block``: one block of XLA operations on every backend, no query loop and no cuDNN
  call, for XLA's cost analysis, which counts a loop body once and cannot see into cuDNN's
  kernel (the benchmark counts FLOPs so).
  """
  t = q.shape[-2]
  backward_chunk = query_chunk
  if one_block:
    query_chunk = backward_chunk = None
  elif query_chunk == -1:
    query_chunk = default_query_chunk(t, k.shape[-2])
    backward_chunk = default_query_chunk(t, k.shape[-2], backward=True)
  if query_chunk is not None and (query_chunk < 1 or t % query_chunk):
    raise ValueError(f'query_chunk={query_chunk} must be a positive divisor of T={t}')
  if not one_block and cudnn_applies(dtype, q.shape[-1]):
    try:
      return _fused(q, k, v, dtype, _FUSED_IMPLEMENTATION)
    except (NotImplementedError, RuntimeError, ValueError) as e:  # jax's checks, at trace time
      logging.log_first_n(logging.WARNING, 'cuDNN fused attention not available (%s): '
                          "running flowpp_jax's own attention kernel", 1, e)
  if save_lse is None:
    save_lse = not on_cpu()
  return flash_attention(q, k, v, dtype, query_chunk, bool(save_lse), backward_chunk)
