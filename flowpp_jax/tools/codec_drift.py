"""How far the codec's coding distributions move between two environments, on the same values.

  python -m flowpp_jax.tools.codec_drift --workdir=DIR IMAGES.npy OUT.npz [--count=N]
  python -m flowpp_jax.tools.codec_drift --workdir=DIR IMAGES.npy OUT.npz --reference=REF.npz

Encodes the first --count images of IMAGES (uint8 [N, H, W, C]) one at a time as
``python -m flowpp_jax.compress`` does, and writes to OUT every Gaussian the coder was given
(mean and std in grid units, in call order) with the values it pushed or popped. With
--reference (the OUT of another environment: other XLA flags, thread counts, jax or CPU), each
pop returns the reference's value instead of coding, so that every layer sees the reference's
inputs and any difference in the Gaussians is the environments' own arithmetic; it then prints
one JSON line comparing the two: how many Gaussians differ in any bit, and the largest
differences of their means and stds, in stds, then what the coder's snapping leaves of them:
how many snap apart, how many the writer records, and how many still differ after the record
(nonzero: such a file would not decode; docs/compression.md, "Portability").
OUT must not exist. Bad arguments print one `error: ...` line and exit with status 2.
"""
import itertools
import json
import os

from absl import flags
import numpy as np

from flowpp_jax.compression import coder
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a training run or an import.')
  _COUNT = flags.DEFINE_integer('count', 8, 'Images coded, from the first.')
  _REFERENCE = flags.DEFINE_string('reference', None, 'The OUT of another environment: follow '
                                   'its values and compare its Gaussians with ours.')


class RecordingStack:
  """A ``coder.Stack`` stand-in that records every Gaussian it is given and the values coded
  under it. Pops are drawn from ``follow`` (a list of int64 arrays: another run's popped values,
  in order) when given, else from a real stack."""

  def __init__(self, stack, follow=None):
    self._stack, self._follow = stack, follow
    self.means, self.stds, self.values = [], [], []

  def _record(self, mean, std, values):
    self.means.append(np.asarray(mean, np.float64).ravel())
    self.stds.append(np.asarray(std, np.float64).ravel())
    self.values.append(np.asarray(values, np.int64).ravel())

  def _pop(self, shape, pop):
    if self._follow is None:
      return pop()
    values = self._follow[len(self.values)]
    if values.size != int(np.prod(shape)):
      raise ValueError('the reference coded other shapes: its images, model or count differ')
    return values.reshape(shape)

  def encode(self, k, mean, std, range_stds=coder.RANGE):
    if self._follow is None:
      self._stack.encode(k, mean, std, range_stds)
    self._record(mean, std, k)

  def decode(self, mean, std, range_stds=coder.RANGE):
    k = self._pop(np.shape(mean), lambda: self._stack.decode(mean, std, range_stds))
    self._record(mean, std, k)
    return k

  def encode_uniform(self, k, bits):
    if self._follow is None:
      self._stack.encode_uniform(k, bits)
    self._record(np.zeros(np.shape(k)), np.zeros(np.shape(k)), k)

  def decode_uniform(self, shape, bits):
    k = self._pop(shape, lambda: self._stack.decode_uniform(shape, bits))
    self._record(np.zeros(shape), np.zeros(shape), k)
    return k

  def num_bits(self):
    return 0 if self._follow is not None else self._stack.num_bits()

  def record(self) -> dict:
    """Every call's Gaussians and values, concatenated in call order (std 0: a uniform draw),
    and each call's size."""
    return {'mean': np.concatenate(self.means), 'std': np.concatenate(self.stds),
            'value': np.concatenate(self.values),
            'size': np.array([v.size for v in self.values], np.int64)}


def load_record(path):
  """-> (the dict of ``RecordingStack.record``, each call's values, in call order)."""
  with np.load(path) as f:
    record = {k: f[k] for k in f.files}
  edges = np.cumsum(np.concatenate([[0], record['size']]))
  follow = [record['value'][a:b] for a, b in itertools.pairwise(edges)]
  return record, follow


def compare(ours: dict, reference: dict) -> dict:
  """Counts and largest differences of the Gaussians of two records of the same values, and
  what the coder's snapping makes of them (``coder``): the entries the two sides snap apart,
  those the reference (as the writer) records as ambiguous, and the Gaussians that still
  differ once ours follow that record, which a decode cannot survive."""
  if ours['mean'].shape != reference['mean'].shape:
    raise ValueError('the two records hold different numbers of Gaussians')
  coded = reference['std'] > 0  # uniform draws have no Gaussian
  mean, std = ours['mean'][coded], ours['std'][coded]
  ref_mean, ref_std = reference['mean'][coded], reference['std'][coded]
  differ = (mean != ref_mean) | (std != ref_std)
  snapped_mean, snapped_std, near, n = coder.snap(ref_mean, ref_std)
  apart = coder.snap(mean, std)[3] != n
  index = np.flatnonzero(near)
  followed_mean, followed_std, _, _ = coder.snap(mean, std, (index, np.mod(n[index], 4)))
  return {
      'gaussians': int(mean.size),
      'differing': int(np.sum(differ)),
      'differing_fraction': float(np.mean(differ)) if mean.size else 0.0,
      'max_mean_difference_stds': float(np.max(np.abs(mean - ref_mean) / ref_std,
                                               initial=0.0)),
      'max_std_relative_difference': float(np.max(np.abs(std - ref_std) / ref_std,
                                                  initial=0.0)),
      'snapped_apart': int(np.sum(apart)),
      'ambiguous_recorded': int(index.size),
      'mismatched_after_the_record': int(np.sum((followed_mean != snapped_mean)
                                                | (followed_std != snapped_std))),
  }


def main(argv):
  if len(argv) != 3:
    cli.fail('usage: python -m flowpp_jax.tools.codec_drift --workdir=DIR IMAGES.npy OUT.npz '
             f'[--reference=REF.npz]; got {" ".join(argv[1:]) or "no arguments"}')
  source, target = argv[1:]
  if _COUNT.value < 1:
    cli.fail(f'--count must be >= 1, got {_COUNT.value}')
  if not target.endswith('.npz') or os.path.lexists(target):
    cli.fail(f'OUT must be a new .npz file (nothing is overwritten), got {target}')
  import jax  # pylint: disable=g-import-not-at-top
  from flowpp_jax import api  # pylint: disable=g-import-not-at-top
  from flowpp_jax.compression import codec as codec_lib  # pylint: disable=g-import-not-at-top
  try:
    images = np.load(source)[:_COUNT.value]
    reference, follow = (None, None) if _REFERENCE.value is None else load_record(
        _REFERENCE.value)
    model = api.load(_WORKDIR.value)
    codec = model.codec
    images = codec.check_images(images)
    stack = RecordingStack(coder.Stack(coder.seed_words(
        codec_lib.SEED_WORDS_PER_DIM * images[0].size)), follow)
    with jax.default_device(jax.devices('cpu')[0]):
      for i in range(len(images)):
        codec.encode_batch(stack, images[i:i + 1])
    np.savez(target, **stack.record())
    if reference is not None:
      print(json.dumps(compare(stack.record(), reference)), flush=True)
  except (OSError, ValueError) as e:
    cli.fail(f'{e}'.splitlines()[0])


if __name__ == '__main__':
  cli.run(main, required='workdir')
