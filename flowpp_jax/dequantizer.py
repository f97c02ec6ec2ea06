"""Dequantization (Flow++ section 3.1): u in (0, 1)^D with its log-density log q(u | x).

VariationalDequantizer: eps ~ N(0, I), u = sigmoid(flow(eps; context(x))), a conditional
flow whose couplings see features of x from ContextNet. UniformDequantizer: u ~ U(0, 1),
log q = 0, the baseline of the ablation.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flowpp_jax import architecture
from flowpp_jax.bijectors import Chain, Sigmoid, sum_per_example
from flowpp_jax.nn.conditioner import GatedStack
from flowpp_jax.nn.layers import Conv, normal_init


def standard_normal_logpdf(z):
  """Per-example log N(z; 0, I): [B, ...] -> [B]."""
  return sum_per_example(-0.5 * jnp.square(z) - 0.5 * jnp.log(2 * jnp.pi))


class ContextNet(nn.Module):
  """Features of x for the dequantizer's couplings: [B, H, W, C] in [0, L) -> [B, H, W/2, F].

  x / L - 0.5 is split like the dequantizer's flow (so the features line up with the
  halves), the halves are stacked on channels, projected by a 3x3 conv to ``features``, then
  passed through a GatedStack with 3x3 output convs (CIFAR-10: 3 blocks, no layer norm;
  ImageNet64: 5 blocks with layer norm; ImageNet32: 8 blocks with layer norm and attention).
  """
  cfg: Any  # the dequant ConfigDict
  num_levels: int
  checkerboard: str
  dropout: float = 0.0
  dtype: Any = jnp.float32
  scan: bool = True
  one_block_attention: bool = False

  @nn.compact
  def __call__(self, x, *, deterministic=True):
    cfg = self.cfg
    (a, b), _ = architecture.make_split('checker', self.checkerboard)(
        x / self.num_levels - 0.5)
    h = Conv(cfg.context_features, 3, 1.0, cfg.weight_norm, self.dtype, name='proj')(
        jnp.concatenate([a, b], axis=-1))
    pos_emb = None
    if cfg.context_mixer != 'none':
      pos_emb = self.param('pos_emb', normal_init(0.01), h.shape[1:])
    return GatedStack(mixer=cfg.context_mixer, heads=cfg.heads, dropout=self.dropout,
                      blocks=cfg.context_blocks, use_nin=False, layer_norm=cfg.context_layer_norm,
                      weight_norm=cfg.weight_norm, dtype=self.dtype, scan=self.scan,
                      one_block_attention=self.one_block_attention, name='stack')(
                          h, None, pos_emb, deterministic=deterministic)


class VariationalDequantizer(nn.Module):
  """u ~ q(u | x) by a conditional flow. x [B, H, W, C] float in [0, L) -> (u, log q [B])."""
  cfg: Any
  num_levels: int
  checkerboard: str
  norm: str
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = True
  one_block_attention: bool = False

  def setup(self):
    self.context = ContextNet(self.cfg, self.num_levels, self.checkerboard, self.dropout,
                              self.dtype, self.scan, self.one_block_attention)
    self.flow = Chain(architecture.build_layers(
        self.cfg, checkerboard=self.checkerboard, norm=self.norm, dropout=self.dropout,
        dtype=self.dtype, remat=self.remat, scan=self.scan,
        one_block_attention=self.one_block_attention, last=[Sigmoid()]))

  def __call__(self, x, rng, *, deterministic=True):
    return self.from_noise(x, normal_init(1.0)(rng, x.shape), deterministic=deterministic)

  def from_noise(self, x, eps, *, deterministic=True):
    """(u, log q(u | x) [B]) for given Gaussian noise eps [B, H, W, C] (its log-density
    N(eps; 0, I) included), as __call__ computes them for the eps it draws."""
    context = self.context(x, deterministic=deterministic)
    u, log_det = self.flow(eps, context, deterministic=deterministic)
    return u, standard_normal_logpdf(eps) - log_det


class UniformDequantizer(nn.Module):
  """u ~ U(0, 1)^D, log q = 0. x [B, H, W, C] -> (u, zeros [B])."""

  def __call__(self, x, rng, *, deterministic=True):
    u = jax.random.uniform(rng, x.shape, jnp.float32)
    return u, jnp.zeros((x.shape[0],), jnp.float32)
