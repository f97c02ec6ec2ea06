"""The coupling's conditioning network (Flow++ section 3.3) and its building blocks.

gated conv -> layer norm -> gated multi-head self-attention -> layer norm, repeated, between
an input projection and an output projection initialised at scale 0.1.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowpp_jax.dtypes import at_least_float32, compute_dtype
from flowpp_jax.nn.layers import Conv, concat_elu, gate, normal_init

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
    c1 = nn.Dropout(self.dropout)(concat_elu(c1), deterministic=deterministic)
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

  @nn.compact
  def __call__(self, x, pos_emb, *, deterministic=True):
    b, h, w, f = x.shape
    d = f // self.heads
    qkv = Conv(3 * f, 1, 1.0, self.weight_norm, self.dtype, name='proj1')(x + pos_emb)
    q, k, v = jnp.moveaxis(qkv.reshape(b, h * w, 3, self.heads, d), 2, 0)
    dtype, out_dtype = compute_dtype(x.dtype, self.dtype), at_least_float32(x.dtype)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    logits = jnp.einsum('bthd,bshd->bhts', q, k).astype(out_dtype) / jnp.sqrt(d)
    weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
    out = jnp.einsum('bhts,bshd->bthd', weights, v).astype(out_dtype).reshape(b, h, w, f)
    out = nn.Dropout(self.dropout)(out, deterministic=deterministic)
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
    c = nn.Dropout(self.dropout)(c, deterministic=deterministic)
    return x + gate(Conv(2 * f, 1, 0.1, self.weight_norm, self.dtype, name='proj2')(c))


class GatedStack(nn.Module):
  """``blocks`` x [GatedConv, LayerNorm, mixer, LayerNorm] on [B, H, W, F].

  mixer: 'attention' (GatedAttention), 'maxout' (GatedMaxout) or 'none' (then the block is
  GatedConv and one LayerNorm, as in the official ImageNet64 dequantizer). ``layer_norm=False``
  drops the norms (the CIFAR-10 dequantizer's context network). LayerNorm: eps 1e-5, learned
  scale and bias per channel.
  """
  blocks: int
  mixer: str = 'attention'
  heads: int = 4
  dropout: float = 0.0
  use_nin: bool = True
  layer_norm: bool = True
  weight_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, pos_emb=None, *, deterministic=True):
    shared = dict(dropout=self.dropout, weight_norm=self.weight_norm, dtype=self.dtype)
    for i in range(self.blocks):
      x = GatedConv(self.use_nin, **shared, name=f'block{i}_conv')(
          x, context, deterministic=deterministic)
      if self.layer_norm:
        x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=f'block{i}_ln1')(x)
      if self.mixer == 'none':
        continue
      if self.mixer == 'attention':
        mixer = GatedAttention(self.heads, **shared, name=f'block{i}_attn')
      else:
        mixer = GatedMaxout(**shared, name=f'block{i}_maxout')
      x = mixer(x, pos_emb, deterministic=deterministic)
      if self.layer_norm:
        x = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=f'block{i}_ln2')(x)
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

  @nn.compact
  def __call__(self, x, context=None, *, num_outputs: int, deterministic=True):
    b, h, w, c = x.shape
    pos_emb = self.param('pos_emb', normal_init(0.01), (h, w, self.filters))
    x = Conv(self.filters, 3, 1.0, self.weight_norm, self.dtype, name='proj_in')(x)
    x = GatedStack(self.blocks, self.mixer, self.heads, self.dropout, use_nin=True,
                   weight_norm=self.weight_norm, dtype=self.dtype, name='stack')(
                       x, context, pos_emb, deterministic=deterministic)
    if self.out_concat_elu:
      x = concat_elu(x)
    x = Conv(c * num_outputs, self.out_kernel, 0.1, self.weight_norm, self.dtype,
             name='proj_out')(x)
    return x.reshape(b, h, w, c, num_outputs)
