"""Measures how exactly a freshly initialised model inverts, on random data.

  python -m flowpp_jax.roundtrip --config=configs/cifar10.py [--batch=8] [--trials=3]

Prints, per trial, max |y - f^-1(f(y))| for real-valued y uniform in [0, L) (data units),
max |log det f + log det f^-1|, and the wall time of both; then whether
decode(encode(x)) == x for uint8 x, and a JSON line with the worst figures.
"""
import functools
import json
import time

from absl import flags
import jax
import jax.numpy as jnp

from flowpp_jax import model as model_lib
from flowpp_jax.model import FlowPlusPlus
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()
  flags.adopt_module_key_flags(cli)

  _BATCH = flags.DEFINE_integer('batch', 8, 'Images per trial.')
  _TRIALS = flags.DEFINE_integer('trials', 3, 'Random batches to invert.')


def _timed(fn, *args):
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


def main(argv):
  cli.refuse_arguments(argv)
  cfg = cli.load_config(_CONFIG).model
  model = FlowPlusPlus(cfg)
  shape = (_BATCH.value, *cfg.image_shape)
  key = jax.random.PRNGKey(0)
  x = jax.random.randint(key, shape, 0, cfg.num_levels).astype(jnp.uint8)
  variables, init_s = _timed(jax.jit(lambda x: model_lib.init_variables(model, x, key)), x)
  print(f'init (compile + run): {init_s:.1f} s')
  errors = jax.jit(functools.partial(model_lib.inversion_errors, model))
  worst = {'max_abs_error': 0.0, 'max_log_det_mismatch': 0.0}
  for trial in range(_TRIALS.value):
    y = jax.random.uniform(jax.random.PRNGKey(trial + 1), shape, maxval=float(cfg.num_levels))
    (err, mismatch), seconds = _timed(errors, variables['params'], y)
    err, mismatch = float(err), float(mismatch)
    worst['max_abs_error'] = max(worst['max_abs_error'], err)
    worst['max_log_det_mismatch'] = max(worst['max_log_det_mismatch'], mismatch)
    print(f'trial {trial}: max|y - inv(fwd(y))| = {err:.3e}, max|logdet sum| = {mismatch:.3e}, '
          f'forward + inverse {seconds:.2f} s (the first trial includes compiling)')
  encode = jax.jit(lambda x: model.apply(variables, x, key, method=model.encode))
  decode = jax.jit(lambda z: model.apply(variables, z, method=model.decode))
  worst['decode_encode_exact'] = bool(jnp.all(decode(encode(x)) == x))
  print(f'decode(encode(x)) == x: {worst["decode_encode_exact"]}')
  print(json.dumps(worst))


if __name__ == '__main__':
  cli.run(main, required='config')
