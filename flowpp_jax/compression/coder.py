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

Portability. The two sides compute each mean and std in their own environment (another CPU,
jax or thread count), which may round their last bits differently. So both are snapped to a
grid before they set a model: the std to STD_BITS significant bits, the mean to a power-of-two
step of 1/128 to 1/64 of the snapped std. A value within AMBIGUITY of a rounding boundary could
snap the other way on the other side: for those, and only those, the encoder sends how it
snapped them (its integer mod 4), in a short record coded next to the symbols. The decoder
never judges ambiguity itself; it follows the record. docs/compression.md gives the drift
measured between environments that sets AMBIGUITY.
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


# Snapping (see the module's docstring). The std keeps STD_BITS significant bits (a relative
# step of 2^-9 to 2^-8); the mean a step of 2^(e + MEAN_STEP_LOG2) for a std in [2^(e-1), 2^e).
# Both cost under 2e-5 bits per value (a mean off by d costs d^2 / (2 std^2) nats).
STD_BITS = 9
MEAN_STEP_LOG2 = -7
# A value is ambiguous within AMBIGUITY steps of a boundary, plus AMBIGUITY_RELATIVE of its own
# size in steps (float64's rounding grows with it). The largest drifts measured between
# environments (docs/compression.md) were 7.0e-12 stds (AMBIGUITY, 2^-22 steps of at most
# 2^-6 stds, is 265x it) and, for means over 100 stds, 2^-44.5 of the mean
# (AMBIGUITY_RELATIVE is 360x it). About 2e-6 of the digits job's values are ambiguous.
AMBIGUITY = 2.0 ** -22
AMBIGUITY_RELATIVE = 2.0 ** -36
# A record is a flag (are there ambiguous entries?), then for each ambiguous entry its index,
# its residue mod 4 and whether another follows. The flag's probability is about that of an
# ambiguous entry among a call's 2N entries (2^-21 each), within [2^-20, 2^-4]: the flag costs
# about that probability / ln 2 bits when clear.
ENTRY_PROBABILITY = 2.0 ** -21
_RESIDUE = constriction.stream.model.Uniform(4)
_MORE = constriction.stream.model.Uniform(2)


def _flag(entries: int):
  p = min(max(entries * ENTRY_PROBABILITY, 2.0 ** -20), 2.0 ** -4)
  return constriction.stream.model.Categorical(np.array([1.0 - p, p]), perfect=False)


class CoderRangeError(ValueError):
  """A value lies outside the range its Gaussian is cut to: it cannot be coded."""


def _ceil_log2(v):
  """ceil(log2(v)) for positive float64 v, exactly (from the binary exponent)."""
  mantissa, exponent = np.frexp(v)  # v = mantissa * 2^exponent, mantissa in [0.5, 1)
  return np.where(mantissa == 0.5, exponent - 1, exponent).astype(np.int64)


# The mean's cells are [n - CELL_SHIFT, n + 1 - CELL_SHIFT) steps, represented by their centre
# n - CELL_CENTRE: an irrational-looking shift, because means are often exactly dyadic (a grid
# value, a half) and would sit on an unshifted grid's boundaries. The std's cells are plain
# roundings of its 9-bit mantissa, [n - 1/2, n + 1/2): so a std just under a power of two
# (mantissa 512 at one exponent) and one just over it (256 at the next) snap to the same
# value, which a shifted grid would not give.
CELL_SHIFT = 0.7360679774997897  # 1/2 + (sqrt(5) - 2)
CELL_CENTRE = CELL_SHIFT - 0.5


def _round(x, tolerance, shift=0.5):
  """float64 x (in steps) -> (its cells n, int64: [n - shift, n + 1 - shift) holds x; whether
  x lies within ``tolerance`` of a cell boundary, where the other side's x may fall in the
  neighbouring cell)."""
  shifted = x + shift
  n = np.floor(shifted)
  return n.astype(np.int64), np.minimum(shifted - n, n + 1 - shifted) < tolerance


def _follow(n, residue):
  """The integer of n - 1, n, n + 1 whose value mod 4 is ``residue``: the encoder's, where the
  encoder's x and ours round to neighbours."""
  return n + np.mod(residue - n + 1, 4) - 1


def snap(mean, std, fixes=None):
  """Float64 mean and std [n] -> (snapped mean, snapped std, ambiguous [2n] bool: std entries
  first, the integers [2n] they rounded to). ``fixes`` (indices into the 2n entries, residues
  mod 4), from the encoder's record, override the rounding of those entries."""
  size = mean.size
  fraction, exponent = np.frexp(np.maximum(std, MIN_STD))  # std = fraction 2^exponent
  n_std, near_std = _round(np.ldexp(fraction, STD_BITS), AMBIGUITY)
  if fixes is not None:
    sel = fixes[0] < size
    n_std[fixes[0][sel]] = _follow(n_std[fixes[0][sel]], fixes[1][sel])
  std = np.ldexp(n_std.astype(np.float64), exponent - STD_BITS)
  shift = np.frexp(std)[1] + MEAN_STEP_LOG2
  x = np.ldexp(mean, -shift)
  n_mean, near_mean = _round(x, AMBIGUITY + AMBIGUITY_RELATIVE * np.abs(x), CELL_SHIFT)
  if fixes is not None:
    sel = fixes[0] >= size
    at = fixes[0][sel] - size
    n_mean[at] = _follow(n_mean[at], fixes[1][sel])
  mean = np.ldexp(n_mean - CELL_CENTRE, shift)
  return mean, std, np.concatenate([near_std, near_mean]), np.concatenate([n_std, n_mean])


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
  undoes the last ``encode`` of arrays of the same shape and models. The side that writes a
  file codes with ``decoder=False``; the side that reads it, which runs each of the writer's
  operations mirrored and in reverse, with ``decoder=True``: each Gaussian call of the writer
  pushes a record of its ambiguous roundings after its symbols, and the reader pops it before
  its mirrored call (see the module's docstring).
  """

  def __init__(self, words: Optional[np.ndarray] = None, decoder: bool = False):
    if words is None:
      self._coder = constriction.stream.stack.AnsCoder()
    else:
      self._coder = constriction.stream.stack.AnsCoder(np.asarray(words, np.uint32).copy())
    self.decoder = decoder

  def _snap(self, mean, std):
    """(snapped mean, snapped std, the record to push after the call or None): the reader
    pops the writer's record here and follows it."""
    mean = np.asarray(mean, np.float64).ravel()
    std = np.asarray(std, np.float64).ravel()
    if self.decoder:
      return (*snap(mean, std, self._pop_record(2 * mean.size))[:2], None)
    mean, std, near, n = snap(mean, std)
    return mean, std, (np.flatnonzero(near), np.mod(n[near], 4))

  def _push_record(self, record, entries: int) -> None:
    """Pushes the record of a call's ambiguous roundings (indices among ``entries``), last
    entry first, so that ``_pop_record`` reads the flag, then the entries in order."""
    index, residue = record
    position = constriction.stream.model.Uniform(entries) if len(index) else None
    for i in reversed(range(len(index))):
      self._coder.encode_reverse(np.array([int(i + 1 < len(index))], np.int32), _MORE)
      self._coder.encode_reverse(np.array([residue[i]], np.int32), _RESIDUE)
      self._coder.encode_reverse(np.array([index[i]], np.int32), position)
    self._coder.encode_reverse(np.array([int(len(index) > 0)], np.int32), _flag(entries))

  def _pop_record(self, entries: int):
    """-> (indices, residues) of the writer's ambiguous roundings of a call of ``entries``."""
    index, residue = [], []
    more = self._coder.decode(_flag(entries), 1)[0]
    position = constriction.stream.model.Uniform(entries) if more else None
    while more:
      index.append(self._coder.decode(position, 1)[0])
      residue.append(self._coder.decode(_RESIDUE, 1)[0])
      more = self._coder.decode(_MORE, 1)[0]
    return np.asarray(index, np.int64), np.asarray(residue, np.int64)

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
    mean, std, record = self._snap(mean, std)
    m, mean_c, std_c, r, centre = _models(mean, std, range_stds)
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
    if record is not None:
      self._push_record(record, 2 * k.size)

  def decode(self, mean, std, range_stds: float = RANGE) -> np.ndarray:
    """Pops integers int64 of mean's shape under N(mean, std^2) (as ``encode`` pushed them)."""
    shape = np.shape(mean)
    mean, std, record = self._snap(mean, std)
    m, mean_c, std_c, r, centre = _models(mean, std, range_stds)
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
    if record is not None:
      self._push_record(record, 2 * k.size)
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
