"""Discretised Gaussians on an ANS stack: the entropy coding under local bits-back coding.

Values live on integer grids: a value v of a grid with step delta is the integer k = v / delta.
A Gaussian N(mean, std^2), both in grid units, codes k with the mass of its bin [k - 1/2,
k + 1/2]. constriction's ANS coder (a stack of 32-bit words, probabilities in 24-bit fixed
point) does the coding; two things here keep its precision from costing bits:
- Wide Gaussians are split in two. Above MAX_STD bins per standard deviation, k is coded as a
  coarse bin of 2^m grid steps under the Gaussian (at most MAX_STD coarse bins per standard
  deviation) and its place in that bin uniformly, so that no bin's probability nears the coder's
  2^-24 resolution. The density varies by at most 1/MAX_STD of itself across a coarse bin.
- Each Gaussian is cut to RANGE standard deviations (a power of two of bins): constriction gives
  every symbol of the range at least 2^-24, and a wider range would spend that floor on symbols
  that never come.
Everything that sets a symbol's model (m, the range, the coarse mean) is computed exactly from
the float64 mean and std with integer and power-of-two arithmetic, so the encoder and decoder
derive the same models from the same inputs.
"""
import hashlib
from typing import Optional

import constriction
import numpy as np

MAX_STD = 64.0  # coarse bins per standard deviation, at most
# Standard deviations kept each side of the mean by default (then rounded up to a power of two
# of bins); the mass beyond is about 6e-5. Wider ranges cost more in floor probabilities than
# they save: 1.1e-4 bits per value at 4 against 2.8e-4 at 8 (tests/compression).
RANGE = 4.0
# The smallest std taken: below it a Gaussian is one bin (~1e-3 of the rest of its mass).
MIN_STD = 1.0 / 16


class CoderRangeError(ValueError):
  """A value lies outside the range its Gaussian is cut to: it cannot be coded."""


def _ceil_log2(v):
  """ceil(log2(v)) for positive float64 v, exactly (from the binary exponent)."""
  mantissa, exponent = np.frexp(v)  # v = mantissa * 2^exponent, mantissa in [0.5, 1)
  return np.where(mantissa == 0.5, exponent - 1, exponent).astype(np.int64)


def _models(mean, std, range_stds):
  """Per element, float64 arrays of any shape in grid units ->
  (coarse step exponent m, coarse mean, coarse std, range half-width exponent r, centre):
  the coarse Gaussian N(coarse mean, coarse std^2) of the symbol floor(k / 2^m) - centre
  is cut to [-2^r, 2^r]."""
  std = np.maximum(np.asarray(std, np.float64), MIN_STD)
  mean = np.asarray(mean, np.float64)
  m = np.maximum(_ceil_log2(std / MAX_STD), 0)
  width = np.ldexp(1.0, m)
  # Coarse bin c holds k = c 2^m ... c 2^m + 2^m - 1, i.e. [c 2^m - 1/2, (c + 1) 2^m - 1/2)
  # of the continuous grid axis: this map sends that interval to [c - 1/2, c + 1/2).
  coarse = (mean + 0.5) / width - 0.5
  centre = np.floor(coarse)
  coarse_std = std / width
  r = np.maximum(_ceil_log2(range_stds * coarse_std + 1.0), 0)
  return m, coarse - centre, coarse_std, r, centre.astype(np.int64)


class Stack:
  """An ANS stack of 32-bit words that codes integer arrays under discretised Gaussians.

  ``Stack(words)`` starts from the given uint32 words (the compressed data, or the seed of
  initial bits for bits-back), ``Stack()`` from nothing. Pushes and pops are LIFO: ``decode``
  undoes the last ``encode`` of arrays of the same shape and models.
  """

  def __init__(self, words: Optional[np.ndarray] = None):
    if words is None:
      self._coder = constriction.stream.stack.AnsCoder()
    else:
      self._coder = constriction.stream.stack.AnsCoder(np.asarray(words, np.uint32).copy())

  def words(self) -> np.ndarray:
    """The stack's content, uint32 [n]."""
    return self._coder.get_compressed()

  def num_bits(self) -> int:
    """Bits of information on the stack (its words less the unused bits of the top one)."""
    return int(self._coder.num_valid_bits())

  def encode(self, k, mean, std, range_stds: float = RANGE) -> None:
    """Pushes integers k (any shape) under N(mean, std^2), mean and std float64 of k's shape in
    grid units. Raises CoderRangeError if some k is more than ~range_stds stds from its mean."""
    k = np.asarray(k, np.int64).ravel()
    m, mean_c, std_c, r, centre = (a.ravel() for a in _models(mean, std, range_stds))
    symbol = np.right_shift(k, m) - centre  # floor(k / 2^m): numpy shifts floor negatives
    if np.any(np.abs(symbol) > np.left_shift(1, r)):
      worst = int(np.argmax(np.abs(symbol) - np.left_shift(1, r)))
      raise CoderRangeError(
          f'value {int(k[worst])} lies {abs(int(symbol[worst]))} coarse bins from its mean '
          f'{float(np.ravel(mean)[worst]):.6g} (std {float(np.ravel(std)[worst]):.3g} bins): '
          f'outside the {range_stds:g}-std range of the coder')
    # Stack order: the places within coarse bins go on first, the coarse symbols last,
    # so that decode reads the coarse symbols (which need only the model) first.
    fine = m > 0
    if np.any(fine):
      sizes = np.left_shift(1, m[fine]).astype(np.int32)
      place = np.bitwise_and(k[fine], np.left_shift(1, m[fine]) - 1)  # k mod 2^m
      self._coder.encode_reverse(place.astype(np.int32), constriction.stream.model.Uniform(),
                                 sizes)
    for exponent in np.unique(r)[::-1]:
      sel = r == exponent
      half = 1 << int(exponent)
      model = constriction.stream.model.QuantizedGaussian(-half, half)
      self._coder.encode_reverse(symbol[sel].astype(np.int32), model, mean_c[sel], std_c[sel])

  def decode(self, mean, std, range_stds: float = RANGE) -> np.ndarray:
    """Pops integers int64 of mean's shape under N(mean, std^2) (as ``encode`` pushed them)."""
    shape = np.shape(mean)
    m, mean_c, std_c, r, centre = (a.ravel() for a in _models(mean, std, range_stds))
    symbol = np.empty(m.shape, np.int64)
    for exponent in np.unique(r):
      sel = r == exponent
      half = 1 << int(exponent)
      model = constriction.stream.model.QuantizedGaussian(-half, half)
      symbol[sel] = self._coder.decode(model, mean_c[sel], std_c[sel])
    k = np.left_shift(symbol + centre, m)
    fine = m > 0
    if np.any(fine):
      sizes = np.left_shift(1, m[fine]).astype(np.int32)
      k[fine] += self._coder.decode(constriction.stream.model.Uniform(), sizes)
    return k.reshape(shape)

  def encode_uniform(self, k, bits: int) -> None:
    """Pushes integers k (any shape) in [0, 2^bits), each at a cost of exactly ``bits``."""
    k = np.asarray(k, np.int64).ravel()
    self._coder.encode_reverse(k.astype(np.int32), constriction.stream.model.Uniform(1 << bits))

  def decode_uniform(self, shape, bits: int) -> np.ndarray:
    """Pops int64 [shape] in [0, 2^bits), as ``encode_uniform`` pushed them."""
    size = int(np.prod(shape))
    k = self._coder.decode(constriction.stream.model.Uniform(1 << bits), size)
    return np.asarray(k, np.int64).reshape(shape)


def seed_words(num_words: int, label: bytes = b'flowpp_jax bits-back seed') -> np.ndarray:
  """``num_words`` deterministic pseudo-random uint32 words (SHA-256 in counter mode), the
  initial bits bits-back coding draws from. The top word is nonzero, as ANS needs."""
  out = bytearray()
  counter = 0
  while len(out) < 4 * num_words:
    out += hashlib.sha256(label + counter.to_bytes(8, 'little')).digest()
    counter += 1
  words = np.frombuffer(bytes(out[:4 * num_words]), '<u4').astype(np.uint32)
  words[-1] |= 1
  return words
