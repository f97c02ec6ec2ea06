"""The per-device train and eval computations, written for ``jax.pmap`` over axis 'batch'.

Randomness (dequantization noise, dropout) is drawn per example from a key made of the seed,
a purpose tag and the example's global position (its place in the training stream, or its index
in the test split), never from the device index: results do not depend on how a batch is split
over devices and hosts.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flowpp_jax import objective
from flowpp_jax.runtime.parallel import AXIS
from flowpp_jax.trainer import optim

# Purpose tags folded into the seed: training, evaluation, the init and sampling never share
# keys.
TRAIN_TAG, EVAL_TAG, INIT_TAG, SAMPLE_TAG = 0, 1, 2, 3


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue bit-identically; the checkpoint holds exactly this.

  step: updates attempted so far (also the index of the next training batch).
  nonfinite_in_row / nonfinite_total: updates skipped because loss or gradient was not finite.
  """
  step: Any
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_in_row: Any
  nonfinite_total: Any


def create_state(params, direction: optax.GradientTransformation) -> TrainState:
  """The state after data-dependent init: the EMA starts at the initial parameters."""
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, ema_params=params,
                    opt_state=direction.init(params), nonfinite_in_row=zero,
                    nonfinite_total=zero)


def example_keys(seed: int, tag: int, positions):
  """positions int [B] -> [B] PRNG keys, one per example."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), tag)
  return jax.vmap(lambda p: jax.random.fold_in(base, p))(positions.astype(jnp.uint32))


def per_example_bpd(model, params, images, keys, *, deterministic: bool):
  """ELBO bits/dim [B] of images uint8 [B, H, W, C], example i using only keys[i].

  The model runs on each example as a batch of one (vmapped; XLA batches the convs back), so
  each example's dropout masks and noise come from its own key.
  """
  def one(image, key):
    noise_key, dropout_key = jax.random.split(key)
    out = model.apply({'params': params}, image[None], noise_key, deterministic=deterministic,
                      rngs={'dropout': dropout_key})
    return out['bpd'][0]
  return jax.vmap(one)(images, keys)


def train_step(state: TrainState, images, positions, *, model, direction, schedule,
               ema_decay: float, seed: int):
  """One update on this device's share of the global batch; call under pmap(axis_name=AXIS).

  images uint8 [b, H, W, C], positions int32 [b]. The loss is the official trainer's: the mean
  over the global batch of -log p(x) (the ELBO) in nats per image, so that the gradient clip
  (optimizer.grad_clip_norm) acts on the same scale as there. Returns (new_state, metrics of
  scalars), as ``apply_gradients``.
  """
  keys = example_keys(seed, TRAIN_TAG, positions)
  scale = float(objective.nats_per_bpd(int(np.prod(images.shape[1:]))))

  def loss_fn(params):
    return jnp.mean(per_example_bpd(model, params, images, keys, deterministic=False)) * scale

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  loss, grads = jax.lax.pmean((loss, grads), AXIS)
  return apply_gradients(state, loss / scale, grads, direction=direction, schedule=schedule,
                         ema_decay=ema_decay)


def apply_gradients(state: TrainState, train_bpd, grads, *, direction, schedule,
                    ema_decay: float):
  """The update of one train step from the global batch's gradient ``grads`` of the mean
  nats per image: Adam on the clipped gradient at the scheduled rate, and in the same step the
  EMA moved towards the parameters *before* this update. The official trainer groups its Adam
  and EMA ops without an order between them, and its checkpoints show the EMA reading the
  variables before Adam writes them (tests/trainer/test_official_training.py): the EMA lags one update.

  A non-finite loss or gradient norm leaves params, EMA and optimiser state untouched and is
  counted instead (the official trainer has no such guard: a NaN would reach its parameters).
  Written here, not with optax.apply_if_finite, which guards the optimiser state only: the
  EMA and the step count must skip too.
  Metrics: train_bpd, grad_norm (before clipping, in nats per image), lr, the counts.
  """
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(train_bpd) & jnp.isfinite(grad_norm)
  lr = schedule(state.step)
  direction_updates, opt_state = direction.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(
      state.params, jax.tree_util.tree_map(lambda u: -lr * u, direction_updates))
  ema_params = optim.ema_update(state.ema_params, state.params, ema_decay)
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
  skipped = (~finite).astype(jnp.int32)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(ema_params, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_in_row=jnp.where(finite, 0, state.nonfinite_in_row + 1),
      nonfinite_total=state.nonfinite_total + skipped)
  metrics = {'train_bpd': train_bpd, 'grad_norm': grad_norm, 'lr': lr,
             'nonfinite_total': new_state.nonfinite_total,
             'nonfinite_in_row': new_state.nonfinite_in_row}
  return new_state, metrics


def log_weights(model, params, images, keys, num_samples: int):
  """log p(x + u_k) - log q(u_k | x) for k < num_samples: [num_samples, B] nats.

  Example i draws its u_k from keys[i] alone; the draws run one after another (lax.map) so
  memory stays that of one forward pass.
  """
  def one(image, key):
    return objective.log_weights(model, {'params': params}, image[None], key, num_samples)[:, 0]
  return jax.vmap(one, out_axes=1)(images, keys)


def eval_sums(params, images, indices, mask, *, model, num_samples: int, seed: int):
  """Sums over this device's real examples (mask [b]) of the single-sample ELBO estimate and
  the K-sample importance-weighted bound, in nats, psum'd over every device; with the count.
  Call under pmap(axis_name=AXIS)."""
  log_w = log_weights(model, params, images, example_keys(seed, EVAL_TAG, indices), num_samples)
  elbo = jnp.mean(log_w, axis=0)  # K single-sample ELBOs, averaged: same expectation, less noise
  iw = objective.iw_bound(log_w)
  mask = mask.astype(jnp.float32)
  sums = {'elbo': jnp.sum(elbo * mask), 'iw': jnp.sum(iw * mask), 'count': jnp.sum(mask)}
  return jax.lax.psum(sums, AXIS)
