"""Measures how exactly a freshly initialised model inverts, on random data.

  python -m flowpp_jax.roundtrip --config=configs/cifar10.py [--batch=8] [--trials=3]

Prints, per trial, max |y - f^-1(f(y))| for real-valued y uniform in [0, L) (data units),
max |log det f + log det f^-1|, and the forward/inverse wall times; then whether
decode(encode(x)) == x for uint8 x, and a JSON line with the worst figures.
"""
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from flowpp_jax.model import FlowPlusPlus

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per trial.')
_TRIALS = flags.DEFINE_integer('trials', 3, 'Random batches to invert.')


def _timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def main(_):
  cfg = _CONFIG.value.model
  model = FlowPlusPlus(cfg)
  shape = (_BATCH.value, *cfg.image_shape)
  key = jax.random.PRNGKey(0)
  x = jax.random.randint(key, shape, 0, cfg.num_levels).astype(jnp.uint8)
  variables, init_s = _timed(jax.jit(lambda x: model.init(
      {'params': key, 'dropout': key}, x, key, deterministic=False)), x)
  print(f'init (compile + run): {init_s:.1f} s')
  flow = lambda y, inverse: model.apply(
      variables, y, method=lambda m, y: m.main_flow(y, inverse=inverse))
  fwd = jax.jit(lambda y: flow(y, False))
  inv = jax.jit(lambda z: flow(z, True))
  worst = {'max_abs_error': 0.0, 'max_log_det_mismatch': 0.0}
  for trial in range(_TRIALS.value):
    y = jax.random.uniform(jax.random.PRNGKey(trial + 1), shape, maxval=float(cfg.num_levels))
    (z, log_det), fwd_s = _timed(fwd, y)
    (y_back, inv_log_det), inv_s = _timed(inv, z)
    err = float(jnp.max(jnp.abs(y_back - y)))
    mismatch = float(jnp.max(jnp.abs(log_det + inv_log_det)))
    worst['max_abs_error'] = max(worst['max_abs_error'], err)
    worst['max_log_det_mismatch'] = max(worst['max_log_det_mismatch'], mismatch)
    print(f'trial {trial}: max|y - inv(fwd(y))| = {err:.3e}, max|logdet sum| = {mismatch:.3e}, '
          f'forward {fwd_s:.2f} s, inverse {inv_s:.2f} s (first trial includes compile)')
  encode = jax.jit(lambda x: model.apply(variables, x, key, method=model.encode))
  decode = jax.jit(lambda z: model.apply(variables, z, method=model.decode))
  worst['decode_encode_exact'] = bool(jnp.all(decode(encode(x)) == x))
  print(f'decode(encode(x)) == x: {worst["decode_encode_exact"]}')
  print(json.dumps(worst))


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
