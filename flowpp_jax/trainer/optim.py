"""The official optimisation: Adam on gradients clipped at a global norm, a learning-rate
schedule with linear warmup, and a Polyak (exponential moving) average of the parameters.

The learning rate is applied outside optax, from the train step's own step counter, so that a
skipped (non-finite) update does not shift the schedule.
"""
import math

import jax
import jax.numpy as jnp
import optax

DECAYS = ('none', 'linear', 'exponential')


def parse_drops(drops: str) -> list:
  """"230000=1e-5,280000=1e-6" -> [(230000, 1e-5), (280000, 1e-6)], sorted by step."""
  pairs = []
  for item in filter(None, (part.strip() for part in drops.split(','))):
    step, sep, value = item.partition('=')
    try:
      if not sep:
        raise ValueError
      pairs.append((int(step), float(value)))
    except ValueError:
      raise ValueError(f'lr.drops must look like "STEP=LR,STEP=LR", got {drops!r}') from None
  return sorted(pairs)


def validate_lr_config(cfg) -> None:
  """Raises ValueError naming the field when the schedule is malformed."""
  if not cfg.peak > 0:
    raise ValueError(f'lr.peak must be > 0, got {cfg.peak}')
  if cfg.warmup_steps < 0:
    raise ValueError(f'lr.warmup_steps must be >= 0, got {cfg.warmup_steps}')
  if cfg.decay not in DECAYS:
    raise ValueError(f'lr.decay must be one of {DECAYS}, got {cfg.decay!r}')
  if cfg.decay == 'linear' and cfg.decay_end <= cfg.decay_start:
    raise ValueError(f'lr.decay_end ({cfg.decay_end}) must be after lr.decay_start '
                     f'({cfg.decay_start})')
  if cfg.decay == 'exponential' and not 0 < cfg.decay_rate <= 1:
    raise ValueError(f'lr.decay_rate must be in (0, 1], got {cfg.decay_rate}')
  if cfg.decay != 'none' and not 0 <= cfg.final <= cfg.peak:
    raise ValueError(f'lr.final must be in [0, lr.peak], got {cfg.final}')
  if cfg.get('drop_warmup_steps', 0) < 0:
    raise ValueError(f'lr.drop_warmup_steps must be >= 0, got {cfg.drop_warmup_steps}')
  if any(value < 0 for _, value in parse_drops(cfg.drops)):
    raise ValueError(f'lr.drops must be non-negative learning rates, got {cfg.drops!r}')


def learning_rate_schedule(cfg):
  """step (int, the number of updates done) -> learning rate, float32.

  ImageNet64's official schedule (warmup, hold, linear decay, hold, then 1e-5 and 1e-6) has
  holes at exact boundaries and a negative stretch; this one is the intended shape.
  """
  validate_lr_config(cfg)
  drops = parse_drops(cfg.drops)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # As the official launchers: lr = peak * step / warmup_steps, so update 0 has a rate of 0
    # (Adam's moments still take its gradient) and the peak is reached at step warmup_steps.
    warmup = jnp.minimum(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    since = jnp.maximum(step - cfg.decay_start, 0.0)
    if cfg.decay == 'linear':
      frac = jnp.minimum(since / (cfg.decay_end - cfg.decay_start), 1.0)
      lr = cfg.peak + frac * (cfg.final - cfg.peak)
    elif cfg.decay == 'exponential':
      # exp(since * log rate), log taken in float64: float32 pow(0.99995, n) drifts by 1e-4.
      lr = jnp.maximum(cfg.peak * jnp.exp(since * math.log(cfg.decay_rate)), cfg.final)
    else:
      lr = jnp.asarray(cfg.peak, jnp.float32)
    lr = lr * warmup
    # .get: workdirs written before drop_warmup_steps existed have no such field.
    ramp = cfg.get('drop_warmup_steps', 0)
    for drop_step, value in drops:
      if ramp:  # ImageNet64 5-bit's official schedule warms up again from 0 after its drop
        value = value * jnp.minimum(1.0, (step - drop_step) / ramp)
      lr = jnp.where(step >= drop_step, value, lr)
    return lr
  return schedule


def validate_optimizer_config(cfg) -> None:
  if not (0 <= cfg.b1 < 1 and 0 <= cfg.b2 < 1):
    raise ValueError(f'optimizer.b1 and b2 must be in [0, 1), got {cfg.b1}, {cfg.b2}')
  if not cfg.eps > 0:
    raise ValueError(f'optimizer.eps must be > 0, got {cfg.eps}')
  if not cfg.grad_clip_norm > 0:
    raise ValueError(f'optimizer.grad_clip_norm must be > 0, got {cfg.grad_clip_norm}')
  if not 0 <= cfg.ema_decay < 1:
    raise ValueError(f'optimizer.ema_decay must be in [0, 1), got {cfg.ema_decay}')
  if cfg.max_nonfinite_in_row < 1:
    raise ValueError(f'optimizer.max_nonfinite_in_row must be >= 1, '
                     f'got {cfg.max_nonfinite_in_row}')


def scale_by_tf_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Adam's direction as TensorFlow 1's AdamOptimizer (the official trainer's) computes it.

  After t updates: m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2), and the direction is
  sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps). TensorFlow adds eps to sqrt(v) before
  the bias correction (Kingma & Ba's "epsilon hat"); optax.scale_by_adam adds it after, which
  is eps / sqrt(1 - b2^t) here: 32x larger at t = 1. The state is optax's ScaleByAdamState
  (count, mu, nu), so checkpoints keep their tree.
  """
  def init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update(grads, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1.0 - b1), state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: v + (jnp.square(g) - v) * (1.0 - b2), state.nu,
                                grads)
    t = count.astype(jnp.float32)
    correction = jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    updates = jax.tree_util.tree_map(lambda m, v: m * correction / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def adam_direction(cfg) -> optax.GradientTransformation:
  """Clipped gradients -> Adam's update direction; the train step scales it by -lr."""
  validate_optimizer_config(cfg)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm),
                     scale_by_tf_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))


def ema_update(ema, params, decay: float):
  """Polyak average: ema <- decay * ema + (1 - decay) * params, leaf by leaf (1 - (1 - decay)
  is decay exactly in float64 for decay in [0.5, 1])."""
  return optax.incremental_update(params, ema, step_size=1.0 - decay)


def with_adam_moments(opt_state, count, mu, nu):
  """An ``adam_direction`` state with Adam's update count and moment trees replaced (mu: the
  first moments, nu: the second; shaped like the parameters)."""
  return tuple(s._replace(count=count, mu=mu, nu=nu) if isinstance(s, optax.ScaleByAdamState)
               else s for s in opt_state)
