"""The conditioner's kernels one at a time, against the machine's float32 matmul peak.

  python -m flowpp_jax.tools.kernel_bench [--positions=512,256] [--examples=4] [--heads=4]
                                          [--head_dim=24] [--filters=96] [--repeats=7]

Times, on JAX's default device, what one device runs for each block of a coupling's
conditioner in the cifar10 side by side of docs/performance.md (by default 4 examples per
device, 4 heads of 24 channels, 96 filters, at 512 and 256 positions):
- the float32 matmul peak: a jitted --peak_size x --peak_size matmul, the reference of
  docs/performance.md's fractions;
- the attention (``backend.attention``): the forward pass, and forward and backward, with the
  backend's query chunks, and with the forward's chunk in both passes for comparison;
- a 3x3 convolution [examples, positions, 2 filters] -> filters (``backend.conv2d``): forward,
  and forward and backward, inside a two-step lax.scan as the scanned blocks run it;
- dropout's mask on the convolution's input (``backend.bernoulli``), and jax.random.bernoulli's.
Each figure is the median of --repeats calls after a warm-up call. FLOP/s count the model's
FLOPs, as the benchmark does: the attention's backward as two forward passes (its recomputed
scores not counted), a convolution's as two. On a CPU, `taskset -c 0` shows one device's share
of a multi-core machine.

Prints a table on stdout, then one JSON line with every figure (seconds, FLOP/s); bad flags
print one `error: ...` line and exit with status 2.
"""
import json
import math
import time

from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from flowpp_jax.nn import backend
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _POSITIONS = flags.DEFINE_list('positions', ['512', '256'], 'Positions per image (H*W), as '
                                 '32 x P/32 maps: the attention runs over all of them.')
  _EXAMPLES = flags.DEFINE_integer('examples', 4, 'Examples per device.')
  _HEADS = flags.DEFINE_integer('heads', 4, 'Attention heads.')
  _HEAD_DIM = flags.DEFINE_integer('head_dim', 24, 'Channels per head.')
  _FILTERS = flags.DEFINE_integer('filters', 96, "The conditioner's width.")
  _REPEATS = flags.DEFINE_integer('repeats', 7, 'Timed calls per figure, after one warm-up.')
  _PEAK_SIZE = flags.DEFINE_integer('peak_size', 4096, 'Side of the peak-measuring matmul.')

_DROPOUT_KEEP = 0.8  # cifar10's dropout of 0.2


def median_seconds(fn, args, repeats: int) -> float:
  """Median wall time of jitted ``fn(*args)`` over ``repeats`` calls, after a warm-up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def train_seconds(fn, args, repeats: int) -> float:
  """median_seconds of one forward and one backward pass of ``fn``: the value and the gradients
  in every argument of sum(fn(args) * c), c a random cotangent (a constant one would let XLA
  fold the products into sums, and the value keeps the forward pass from being dropped)."""
  shape = jax.eval_shape(fn, *args).shape
  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  loss = lambda c, *a: jnp.sum(fn(*a) * c)
  step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(1, len(args) + 1))))
  return median_seconds(step, (cotangent, *args), repeats)


def peak_figures(size: int, repeats: int) -> dict:
  a = jnp.ones((size, size), jnp.float32)
  seconds = median_seconds(jax.jit(jnp.matmul), (a, a), repeats)
  return {'peak_flops_per_s': 2 * size**3 / seconds}


def attention_figures(n: int, t: int, d: int, repeats: int) -> dict:
  """Attention over ``t`` positions for ``n`` = examples x heads; chunks: the backend's, then
  the forward's in both passes."""
  rng = np.random.default_rng(t)
  q, k, v = (jnp.asarray(rng.normal(size=(n, 1, t, d)), jnp.float32) for _ in range(3))
  forward_chunk = backend.default_query_chunk(t, t)
  flops = 4 * n * t * t * d  # two products of 2 n t t d FLOPs
  figures = {}
  for name, fn in (
      ('attention', backend.attention),
      ('attention_forward_chunks_both_passes',
       lambda *a: backend.attention(*a, query_chunk=forward_chunk))):
    fwd = median_seconds(jax.jit(fn), (q, k, v), repeats)
    both = train_seconds(fn, (q, k, v), repeats)
    figures.update({f'{name}_{t}_forward_s': fwd, f'{name}_{t}_train_s': both,
                    f'{name}_{t}_forward_flops_per_s': flops / fwd,
                    f'{name}_{t}_train_flops_per_s': 3 * flops / both})
  figures[f'attention_{t}_chunks'] = [forward_chunk,
                                      backend.default_query_chunk(t, t, backward=True)]
  return figures


def conv_figures(b: int, t: int, f: int, repeats: int) -> dict:
  """The 3x3 convolution of a gated block, 2f -> f on [b, 32, t / 32] maps, twice in a scan;
  and the dropout mask on its input."""
  rng = np.random.default_rng(t + 1)
  shape = (b, 32, t // 32, 2 * f)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  ws = jnp.asarray(rng.normal(size=(2, 3, 3, 2 * f, f)) * 0.05, jnp.float32)

  def scanned(x, ws):
    return lax.scan(lambda c, w: (c, backend.conv2d(x, w)), 0, ws)[1]

  flops = 2 * 2 * math.prod(shape[:3]) * 9 * 2 * f * f  # two convolutions
  fwd = median_seconds(jax.jit(scanned), (x, ws), repeats)
  both = train_seconds(scanned, (x, ws), repeats)
  key = jax.random.PRNGKey(0)
  masks = {name: median_seconds(jax.jit(lambda k, draw=draw: draw(k, _DROPOUT_KEEP, shape)),
                                (key,), repeats)
           for name, draw in (('bernoulli', backend.bernoulli),
                              ('jax_bernoulli', jax.random.bernoulli))}
  return {f'conv3x3_{t}_forward_s': fwd / 2, f'conv3x3_{t}_train_s': both / 2,
          f'conv3x3_{t}_forward_flops_per_s': flops / fwd,
          f'conv3x3_{t}_train_flops_per_s': 3 * flops / both,
          f'dropout_mask_{t}_s': masks['bernoulli'],
          f'jax_bernoulli_mask_{t}_s': masks['jax_bernoulli']}


def table(figures: dict) -> str:
  peak = figures['peak_flops_per_s']
  lines = ['| kernel | time | GFLOP/s | % of the matmul peak |', '|---|---|---|---|',
           f'| float32 matmul peak | | {peak / 1e9:.1f} | 100 |']
  for name, seconds in figures.items():
    if not name.endswith('_s') or name.endswith('flops_per_s'):
      continue
    rate = figures.get(name[:-2] + '_flops_per_s')
    rate_cells = (f'{rate / 1e9:.1f} | {100 * rate / peak:.0f}' if rate else ' | ')
    lines.append(f'| {name[:-2]} | {seconds * 1e3:.2f} ms | {rate_cells} |')
  return '\n'.join(lines)


def main(argv):
  cli.refuse_arguments(argv)
  try:
    positions = [int(p) for p in _POSITIONS.value]
  except ValueError:
    cli.fail(f'--positions takes integers, got {",".join(_POSITIONS.value)}')
  sizes = (_EXAMPLES.value, _HEADS.value, _HEAD_DIM.value, _FILTERS.value, _REPEATS.value,
           _PEAK_SIZE.value)
  if min(sizes) < 1 or any(p < 32 or p % 32 for p in positions):
    cli.fail('--examples, --heads, --head_dim, --filters, --repeats and --peak_size must be '
             f'>= 1 and --positions multiples of 32, got {sizes} and {positions}')
  cli.say(f'measuring the matmul peak ({_PEAK_SIZE.value} x {_PEAK_SIZE.value})')
  figures = peak_figures(_PEAK_SIZE.value, _REPEATS.value)
  for t in positions:
    cli.say(f'timing the kernels at {t} positions')
    figures.update(attention_figures(_EXAMPLES.value * _HEADS.value, t, _HEAD_DIM.value,
                                     _REPEATS.value))
    figures.update(conv_figures(_EXAMPLES.value, t, _FILTERS.value, _REPEATS.value))
  print(table(figures))
  print(json.dumps({'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
                    **figures}), flush=True)


if __name__ == '__main__':
  cli.run(main, required=None)
