"""The variational-dequantization objectives: ELBO and importance-weighted bound, in nats.

log P(x) >= log (1/K) sum_k p(x + u_k) / q(u_k | x), u_k ~ q(. | x); K = 1 is the ELBO.
"""
import jax
import jax.numpy as jnp
import numpy as np


def nats_per_bpd(num_dims: int):
  """D ln 2: bits/dim times this is nats per example of ``num_dims`` dimensions."""
  return num_dims * np.log(2.0)


def bits_per_dim(log_likelihood, num_dims: int):
  """Nats per example [B] -> bits per dimension [B]."""
  return -log_likelihood / nats_per_bpd(num_dims)


def log_weights(model, variables, images, rng, num_samples: int):
  """log p(x + u_k) - log q(u_k | x), [num_samples, B] nats, for num_samples draws of u.

  images: uint8 [B, H, W, C]. The draws run one after another (lax.map), so memory stays
  that of one forward pass whatever ``num_samples`` is.
  """
  def log_weight(key):
    out = model.apply(variables, images, key)
    return out['log_px'] - out['log_qu']
  return jax.lax.map(log_weight, jax.random.split(rng, num_samples))


def iw_bound(log_w):
  """[K, B] log weights -> [B] importance-weighted bound log (1/K) sum_k exp(log_w)."""
  return jax.nn.logsumexp(log_w, axis=0) - jnp.log(log_w.shape[0])


def iw_log_likelihood(model, variables, images, rng, num_samples: int):
  """Importance-weighted lower bound on log P(x), [B] nats, from ``num_samples`` draws of u."""
  return iw_bound(log_weights(model, variables, images, rng, num_samples))
