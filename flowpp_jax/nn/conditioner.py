"""The coupling's conditioning network (Flow++ section 3.3) and its building blocks.

gated conv -> layer norm -> gated multi-head self-attention -> layer norm, repeated, between
an input projection and an output projection initialised at scale 0.1.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from flowpp_jax.dtypes import compute_dtype
from flowpp_jax.nn.backend import attention
from flowpp_jax.nn.layers import Conv, Dropout, concat_elu, gate, normal_init

MIXERS = ('attention', 'maxout', 'none')


class GatedConv(nn.Module):
  """Gated residual conv: x + gate(c2(dropout(elu(c1(elu(x)) [+ a_proj(elu(context))])))).

  x [B, H, W, F], context [B, H, W, Fc] or None -> [B, H, W, F]. c2 is 1x1 (``use_nin``,
  the couplings) or 3x3 (the dequantizer's context network), with init_scale 0.1 so the block
  starts close to the identity.
  """
  use_nin: bool = True
  dropout: float = 0.0
  weight_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, *, deterministic=True):
    f = x.shape[-1]
    conv = lambda feats, k, scale=1.0, name=None: Conv(
        feats, k, scale, self.weight_norm, self.dtype, name=name)
    c1 = conv(f, 3, name='c1')(concat_elu(x))
    if context is not None:
      c1 = c1 + conv(f, 1, name='a_proj')(concat_elu(context))
    c1 = Dropout(self.dropout)(concat_elu(c1), deterministic=deterministic)
    c2 = conv(2 * f, 1 if self.use_nin else 3, 0.1, name='c2')(c1)
    return x + gate(c2)


class GatedAttention(nn.Module):
  """Gated multi-head self-attention over all H*W positions.

  x [B, H, W, F], pos_emb [H, W, F] -> [B, H, W, F]. ``heads`` must divide F. The softmax is
  taken in float32 whatever the compute dtype.
  """
  heads: int = 4
  dropout: float = 0.0
  weight_norm: bool = False
  dtype: Any = jnp.float32
  one_block: bool = False  # backend.attention's: one block of XLA operations

  @nn.compact
  def __call__(self, x, pos_emb, *, deterministic=True):
    b, h, w, f = x.shape
    d = f // self.heads
    qkv = Conv(3 * f, 1, 1.0, self.weight_norm, self.dtype, name='proj1')(x + pos_emb)
    # [3, B, heads, H*W, d]: heads ahead of positions, so that the products are plain
    # batched matmuls.
    q, k, v = jnp.transpose(qkv.reshape(b, h * w, 3, self.heads, d), (2, 0, 3, 1, 4))
    out = attention(q, k, v, compute_dtype(x.dtype, self.dtype), one_block=self.one_block)
    out = jnp.transpose(out, (0, 2, 1, 3)).reshape(b, h, w, f)
    out = Dropout(self.dropout)(out, deterministic=deterministic)
    return x + gate(Conv(2 * f, 1, 0.1, self.weight_norm, self.dtype, name='proj2')(out))


class GatedMaxout(nn.Module):
  """The no-attention ablation's replacement: a pointwise maxout MLP with the attention's
  parameter count. x [B, H, W, F], pos_emb [H, W, F] -> [B, H, W, F]."""
  dropout: float = 0.0
  weight_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pos_emb, *, deterministic=True):
    f = x.shape[-1]
    c = Conv(3 * f, 1, 1.0, self.weight_norm, self.dtype, name='proj1')(x + pos_emb)
    c = jnp.max(c.reshape(*x.shape, 3), axis=-1)
    c = Dropout(self.dropout)(c, deterministic=deterministic)
    return x + gate(Conv(2 * f, 1, 0.1, self.weight_norm, self.dtype, name='proj2')(c))


class _BlockSettings(nn.Module):
  """The settings a GatedStack passes on to each of its blocks (see GatedStack)."""
  mixer: str = 'attention'
  heads: int = 4
  dropout: float = 0.0
  use_nin: bool = True
  layer_norm: bool = True
  weight_norm: bool = False
  dtype: Any = jnp.float32
  one_block_attention: bool = False


class GatedBlock(_BlockSettings):
  """One block of a GatedStack: GatedConv, LayerNorm, mixer, LayerNorm (see GatedStack).

  Written as a scan body: ``(x [B, H, W, F], (context, pos_emb)) -> (x, None)``, so that a
  stack of any depth is traced and compiled as one block.
  """
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, inputs):
    context, pos_emb = inputs
    shared = dict(dropout=self.dropout, weight_norm=self.weight_norm, dtype=self.dtype)
    norm = lambda name: (nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)
                         if self.layer_norm else (lambda a: a))
    x = GatedConv(self.use_nin, **shared, name='conv')(
        x, context, deterministic=self.deterministic)
    x = norm('ln1')(x)
    if self.mixer == 'none':
      return x, None
    if self.mixer == 'attention':
      mixer = GatedAttention(self.heads, **shared, one_block=self.one_block_attention,
                             name='attn')
    else:
      mixer = GatedMaxout(**shared, name='maxout')
    x = mixer(x, pos_emb, deterministic=self.deterministic)
    return norm('ln2')(x), None


class GatedStack(_BlockSettings):
  """``blocks`` x [GatedConv, LayerNorm, mixer, LayerNorm] on [B, H, W, F].

  mixer: 'attention' (GatedAttention), 'maxout' (GatedMaxout) or 'none' (then the block is
  GatedConv and one LayerNorm, as in the official ImageNet64 dequantizer). ``layer_norm=False``
  drops the norms (the CIFAR-10 dequantizer's context network). LayerNorm: eps 1e-5, learned
  scale and bias per channel.

  ``scan=True`` runs the blocks under ``nn.scan``: their parameters are stacked on a leading
  [blocks] axis (params['blocks']) and XLA compiles one block, not ``blocks`` copies, so
  compile time does not grow with depth. ``scan=False`` builds params['block0'], ... and
  unrolls them.
  """
  blocks: int = 1
  scan: bool = True

  @nn.compact
  def __call__(self, x, context=None, pos_emb=None, *, deterministic=True):
    fields = (self.mixer, self.heads, self.dropout, self.use_nin, self.layer_norm,
              self.weight_norm, self.dtype, self.one_block_attention, deterministic)
    if not self.scan:
      for i in range(self.blocks):
        x, _ = GatedBlock(*fields, name=f'block{i}')(x, (context, pos_emb))
      return x
    # Intermediates (capture_intermediates) are stacked like the params.
    scanned = nn.scan(GatedBlock, variable_axes={'params': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                      length=self.blocks)
    x, _ = scanned(*fields, name='blocks')(x, (context, pos_emb))
    return x


class Conditioner(nn.Module):
  """The coupling network: x1 [B, H, W, C] (+ context) -> [B, H, W, C, num_outputs].

  pos_emb [H, W, filters] ~ N(0, 0.01^2); proj_in 3x3 conv to ``filters``; a GatedStack;
  then the output projection (init_scale 0.1): a 3x3 conv (CIFAR-10), or concat-ELU followed
  by a 3x3 conv (ImageNet 32 and 64), per ``out_concat_elu``; ``out_kernel=1`` gives a 1x1
  ("nin") output instead. pos_emb is created even when mixer='none', as in the official code, so
  parameter counts match it; it then receives zero gradient.
  """
  filters: int
  blocks: int
  mixer: str = 'attention'
  heads: int = 4
  dropout: float = 0.0
  weight_norm: bool = False
  out_concat_elu: bool = False
  out_kernel: int = 3
  dtype: Any = jnp.float32
  scan: bool = True
  one_block_attention: bool = False

  @nn.compact
  def __call__(self, x, context=None, *, num_outputs: int, deterministic=True):
    b, h, w, c = x.shape
    pos_emb = self.param('pos_emb', normal_init(0.01), (h, w, self.filters))
    x = Conv(self.filters, 3, 1.0, self.weight_norm, self.dtype, name='proj_in')(x)
    x = GatedStack(mixer=self.mixer, heads=self.heads, dropout=self.dropout, use_nin=True,
                   weight_norm=self.weight_norm, dtype=self.dtype, blocks=self.blocks,
                   scan=self.scan, one_block_attention=self.one_block_attention, name='stack')(
                       x, context, pos_emb, deterministic=deterministic)
    if self.out_concat_elu:
      x = concat_elu(x)
    x = Conv(c * num_outputs, self.out_kernel, 0.1, self.weight_norm, self.dtype,
             name='proj_out')(x)
    return x.reshape(b, h, w, c, num_outputs)
