"""Test-split bits/dim with the EMA parameters: the single-sample ELBO and the importance-
weighted bound with K dequantization samples. ``--mode=eval`` prints them and writes
WORKDIR/eval.json."""
import functools
import json

import jax
import numpy as np

from flowpp_jax import objective
from flowpp_jax.data import input_pipeline
from flowpp_jax.runtime import fileio, parallel
from flowpp_jax.trainer import steps


def eval_program(exp, num_samples: int, devices=None):
  """steps.eval_sums pmapped over ``devices`` (default: the local devices): (params, images
  [D, b, H, W, C] uint8, indices [D, b] int32, mask [D, b] bool) -> replicated sums."""
  return jax.pmap(functools.partial(steps.eval_sums, model=exp.model, num_samples=num_samples,
                                    seed=exp.config.seed),
                  axis_name=steps.AXIS, devices=devices)


def make_evaluator(exp, num_samples: int):
  """(replicated params, num_examples) -> {'bpd', 'bpd_iw', 'num_examples'} over the first
  num_examples test images (0: all; training images where the data has no test split).
  Deterministic for given params and seed."""
  p_eval = eval_program(exp, num_samples)
  source = exp.source('test')

  def evaluate(p_params, num_examples: int) -> dict:
    totals = {'elbo': 0.0, 'iw': 0.0, 'count': 0.0}
    for images, mask, indices in input_pipeline.eval_batches(
        source, exp.config.eval.batch_size, num_examples, jax.process_index(),
        jax.process_count()):
      sums = p_eval(p_params, parallel.shard(images), parallel.shard(indices.astype(np.int32)),
                    parallel.shard(mask))
      for key, value in parallel.unreplicate(sums).items():
        totals[key] += float(value)  # float64 on the host: no drift over many batches
    count = totals['count']
    to_bpd = lambda nats: objective.bits_per_dim(nats / count, exp.model.num_dims)
    return {'bpd': to_bpd(totals['elbo']), 'bpd_iw': to_bpd(totals['iw']),
            'num_examples': int(count)}
  return evaluate


def evaluate_and_report(exp, p_params, step: int) -> dict:
  """The full evaluation the config asks for; prints it and writes WORKDIR/eval.json."""
  cfg = exp.config.eval
  result = make_evaluator(exp, cfg.num_iw_samples)(p_params, cfg.num_examples)
  result = {'step': step, **result, 'num_iw_samples': cfg.num_iw_samples,
            'split': exp.data.eval_split}
  if jax.process_index() == 0:
    print(f'eval step {step}: {exp.data.eval_split} {result["bpd"]:.4f} bits/dim (ELBO), '
          f'{result["bpd_iw"]:.4f} bits/dim (importance-weighted, K={cfg.num_iw_samples}) '
          f'on {result["num_examples"]} images', flush=True)
    fileio.write_text(fileio.path(exp.workdir) / 'eval.json', json.dumps(result, indent=2) + '\n')
  return result
