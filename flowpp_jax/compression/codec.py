"""Lossless compression of uint8 images with a Flow++ model: local bits-back coding of the
main flow and bits-back coding of the dequantizer (Ho, Lohn and Abbeel, NeurIPS 2019).

One image x costs, per batch of images coded together:
- pop eps ~ N(0, I) from the stack (on the grid DELTA), and run the dequantizer's flow forward
  under ``coding`` to get u = dequantizer(eps; x) in (0, 1), getting back -log2 q(u|x) bits;
- run the main flow forward from y = x + u under ``coding`` (each layer's -log2 |det J|);
- push its latent z under N(0, I).
So the file grows by about the ELBO, -log2 p(x + u) + log2 q(u|x), per image. Decoding runs the
mirror image in reverse batch order and ends with the stack back at its seed.

The initial bits: the first batch pops eps before anything is pushed, so the stack starts from
``seed_words`` (SHA-256, SEED_WORDS_PER_DIM words per dimension of a batch). The words at its
bottom that coding never touched are not stored: the decoder regenerates them. What is stored
of the seed is the one-time cost, about 24 bits per dimension of one batch.

The model runs as ``scan_layers=False``, ``remat=False`` on the CPU backend in float64, layer
by layer (jitted per layer), with the same batch shapes on both sides. Each Gaussian's mean and
std are snapped to a grid before they set a model, and the encoder sends how it snapped the few
that lie near a rounding boundary (``coder``), so that a file decodes on another CPU, jax or
thread count than the one that encoded it; a checksum of the images catches a decode that went
wrong anyway.
"""
import dataclasses
import hashlib
import json
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax import architecture
from flowpp_jax.compression import flow_coding
from flowpp_jax.compression.coder import CoderRangeError, Stack, seed_words
from flowpp_jax.model import FlowPlusPlus

FORMAT_VERSION = 2  # 2: float64 coding with snapped Gaussians (1 decoded only where encoded)
MAGIC = b'FPPZ'
GRID_BITS = 14  # every value between layers, u included, is a multiple of DELTA = 2^-14
DELTA = 2.0 ** -GRID_BITS
# The local Gaussians' scale, sigma = 2^-9 in each layer's input units. With the grid, chosen
# on the digits job (docs/compression.md): finer grids and wider sigmas cost more initial bits.
SIGMA_LOG2 = -9
LATENT_RANGE = 16.0  # stds of N(0, I) kept for z: wider than eps's, a latent is not chosen
SEED_WORDS_PER_DIM = 2  # 64 bits per dimension of a batch: twice what a batch has popped
DIGEST = 8  # bytes of SHA-256 kept for the fingerprint and the checksums


# What a decode that went wrong means, given that the fingerprint and the checksum matched.
_MISMATCH = ('this machine computes the model further from the encoder\'s than the format '
             'allows (docs/compression.md, "Portability"); decode where it was encoded, and '
             'report the two machines')


class CodecError(ValueError):
  """A file that cannot be decoded here, or images that cannot be encoded: the message says
  why and what to do."""


def _digest(*parts: bytes) -> bytes:
  h = hashlib.sha256()
  for part in parts:
    h.update(part)
  return h.digest()[:DIGEST]


def coding_config(model_config):
  """The model config the coder runs: layers unrolled (coding sees every layer call) and no
  rematerialisation; everything else as trained."""
  cfg = model_config.copy_and_resolve_references()
  cfg.scan_layers = False
  cfg.remat = False
  return cfg


def fingerprint(model_config, params) -> bytes:
  """DIGEST bytes of SHA-256 over the coding model config and every parameter (path, dtype,
  shape, bytes): any change of either changes it."""
  cfg = coding_config(model_config).to_dict()
  parts = [json.dumps(cfg, sort_keys=True, default=str).encode()]
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    leaf = np.ascontiguousarray(leaf)
    parts += [jax.tree_util.keystr(path).encode(), str(leaf.dtype).encode(),
              str(leaf.shape).encode(), leaf.tobytes()]
  return _digest(*parts)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    out.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
    n >>= 7
    if not n:
      return bytes(out)


def _read_varint(data: bytes, at: int):
  n, shift = 0, 0
  while True:
    if at >= len(data) or shift > 63:
      raise CodecError('the file is truncated or corrupted (it ends inside its header)')
    byte = data[at]
    n |= (byte & 0x7f) << shift
    at, shift = at + 1, shift + 7
    if not byte & 0x80:
      return n, at


@dataclasses.dataclass
class Header:
  """What a file says about itself: MAGIC, the format version, then varints (count, H, W, C,
  num_levels, batch_size, seed_prefix, grid bits, -log2 sigma), two DIGEST-byte digests
  (the model's fingerprint, the images) and the PNG names (a varint length, then
  newline-separated UTF-8; none for an array)."""
  count: int
  image_shape: tuple
  num_levels: int
  batch_size: int
  seed_prefix: int  # bottom seed words not stored
  fingerprint: bytes
  images_digest: bytes
  names: tuple = ()
  grid_bits: int = GRID_BITS
  sigma_log2: int = SIGMA_LOG2

  def pack(self) -> bytes:
    names = '\n'.join(self.names).encode()
    numbers = (self.count, *self.image_shape, self.num_levels, self.batch_size,
               self.seed_prefix, self.grid_bits, -self.sigma_log2)
    return (MAGIC + bytes([FORMAT_VERSION]) + b''.join(_varint(n) for n in numbers)
            + self.fingerprint + self.images_digest + _varint(len(names))
            + names)

  @classmethod
  def unpack(cls, data: bytes):
    """-> (Header, offset of the payload). Raises CodecError on a malformed header."""
    if len(data) < 5 or data[:4] != MAGIC:
      raise CodecError('not a flowpp_jax compressed file (its first bytes are not "FPPZ")')
    if data[4] != FORMAT_VERSION:
      raise CodecError(f'the file is format version {data[4]}; this flowpp_jax reads '
                       f'version {FORMAT_VERSION}: decode it with the flowpp_jax that wrote it')
    at, numbers = 5, []
    for _ in range(9):
      n, at = _read_varint(data, at)
      numbers.append(n)
    digests = [data[at + i * DIGEST:at + (i + 1) * DIGEST] for i in range(2)]
    names_len, at = _read_varint(data, at + 2 * DIGEST)
    if len(data) < at + names_len:
      raise CodecError('the file is truncated or corrupted (it ends inside its header)')
    names = data[at:at + names_len].decode(errors='replace')
    count, h, w, c, levels, batch, prefix, grid_bits, sigma = numbers
    header = cls(count, (h, w, c), levels, batch, prefix, *digests,
                 tuple(names.split('\n')) if names else (), grid_bits, -sigma)
    return header, at + names_len


def batches(count: int, batch_size: int):
  """[(start, stop)] of the batches, the last one partial: both sides code the same shapes."""
  return [(a, min(a + batch_size, count)) for a in range(0, count, batch_size)]


class ImageCodec:
  """Compresses uint8 images [N, H, W, C] of a model's shape to bytes, and back exactly.

  ``model_config`` is the ``model`` ConfigDict of a run and ``params`` its parameters (scanned
  or not). ``progress(done, total)`` is called after each batch if given.
  """

  def __init__(self, model_config, params):
    self.config = coding_config(model_config)
    self.model = FlowPlusPlus(self.config)
    self._cpu = jax.devices('cpu')[0]
    params = architecture.unscanned_params(jax.tree_util.tree_map(np.asarray, params))
    with jax.enable_x64(True):  # the coding runs in float64 (the module's docstring)
      self.params = jax.device_put(jax.tree_util.tree_map(
          lambda a: np.asarray(a, flow_coding.VALUE_DTYPE), params), self._cpu)
    self.fingerprint = fingerprint(model_config, params)
    self.variational = self.config.dequant.kind == 'variational'
    self.sigma = 2.0 ** SIGMA_LOG2
    self._programs = flow_coding.Programs()
    with jax.default_device(self._cpu):
      self._context = jax.jit(lambda p, x: self.model.apply(
          {'params': p}, x, method=lambda m, x: m.dequantizer.context(x)))
      self._log_px = jax.jit(lambda p, y: self.model.apply(
          {'params': p}, y, method=FlowPlusPlus.log_density))
      self._log_qu = jax.jit(lambda p, x, e: self.model.apply(
          {'params': p}, x, e, method=lambda m, x, e: m.dequantizer.from_noise(x, e))[1])
    self.last_report = None  # what the latest encode measured (see encode)
    self.ledger = None  # a list: each coded layer call appends a flow_coding.LayerCall

  @property
  def image_shape(self) -> tuple:
    return tuple(self.config.image_shape)

  # -- one batch ---------------------------------------------------------------------------

  def _run(self, method, *args):
    return self.model.apply({'params': self.params}, *args, method=method)

  def _dequant_flow(self, stack, value, x, inverse):
    rows = flow_coding.padded(np.asarray(x, np.float64), self._programs.rows)
    context = jnp.asarray(flow_coding.first_rows(self._context(self.params, rows), len(x)))
    flow = lambda m, v, c: m.dequantizer.flow(v, c, inverse=inverse)[0]
    with flow_coding.coding(stack, self.sigma, DELTA, self._programs, self.ledger):
      return flow_coding.to_grid(self._run(flow, flow_coding.from_grid(value, DELTA), context),
                                 DELTA)

  def _main_flow(self, stack, value, inverse):
    flow = lambda m, v: m.main_flow(v, inverse=inverse)[0]
    with flow_coding.coding(stack, self.sigma, DELTA, self._programs, self.ledger):
      return flow_coding.to_grid(self._run(flow, flow_coding.from_grid(value, DELTA)), DELTA)

  def encode_batch(self, stack: Stack, x: np.ndarray):
    """Codes images x uint8 [B, H, W, C] onto ``stack``. Returns (u, eps), int64 grid values
    [B, H, W, C] of the dequantization noise used (eps None for a uniform dequantizer)."""
    with jax.enable_x64(True):
      return self._encode_batch(stack, x)

  def _encode_batch(self, stack, x):
    shape = x.shape
    eps = None
    if self.variational:
      eps = stack.decode(np.zeros(shape), np.full(shape, 1.0 / DELTA))
      u = self._dequant_flow(stack, eps, x, inverse=False)
      if np.any(u < 0) or np.any(u >= 1 << GRID_BITS):  # flow_coding keeps u inside
        raise AssertionError('the dequantizer gave a u outside [0, 1)')
    else:
      u = stack.decode_uniform(shape, GRID_BITS)
    y = np.left_shift(x.astype(np.int64), GRID_BITS) + u
    z = self._main_flow(stack, y, inverse=False)
    stack.encode(z, np.zeros(z.shape), np.full(z.shape, 1.0 / DELTA), LATENT_RANGE)
    return u, eps

  def elbo_bits(self, x: np.ndarray, u: np.ndarray, eps) -> np.ndarray:
    """The model's -log2 p(x + u) + log2 q(u | x) [B] in bits, without coding, at the noise
    that ``encode_batch`` returned for images x uint8 [B, H, W, C]: what coding them should
    cost."""
    rows = lambda a: flow_coding.padded(a, self._programs.rows)
    with jax.default_device(self._cpu), jax.enable_x64(True):
      xf = np.asarray(x, np.float64)
      log_px = np.asarray(self._log_px(self.params, rows(xf + np.asarray(
          flow_coding.from_grid(u, DELTA)))), np.float64)
      log_qu = 0.0
      if self.variational:
        log_qu = np.asarray(self._log_qu(self.params, rows(xf), rows(np.asarray(
            flow_coding.from_grid(eps, DELTA)))), np.float64)
    return (log_qu - log_px)[:len(x)] / np.log(2)

  def decode_batch(self, stack: Stack, count: int) -> np.ndarray:
    """Undoes ``encode_batch`` of ``count`` images: -> uint8 [count, H, W, C]."""
    with jax.enable_x64(True):
      return self._decode_batch(stack, count)

  def _decode_batch(self, stack, count):
    z_shape = (count, *self.model.latent_shape)
    z = stack.decode(np.zeros(z_shape), np.full(z_shape, 1.0 / DELTA), LATENT_RANGE)
    y = self._main_flow(stack, z, inverse=True)
    x = np.right_shift(y, GRID_BITS)
    if np.any(x < 0) or np.any(x >= self.config.num_levels):
      raise CodecError('decoding went wrong (a pixel outside [0, num_levels)): ' + _MISMATCH)
    u = np.bitwise_and(y, (1 << GRID_BITS) - 1)
    if self.variational:
      eps = self._dequant_flow(stack, u, x, inverse=True)
      stack.encode(eps, np.zeros(eps.shape), np.full(eps.shape, 1.0 / DELTA))
    else:
      stack.encode_uniform(u, GRID_BITS)
    return x.astype(np.uint8)

  # -- files -------------------------------------------------------------------------------

  def check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    try:
      self.model.check_images(images)
      self.model.check_values(images)
    except ValueError as e:
      raise CodecError(str(e)) from None
    if len(images) == 0:
      raise CodecError('no images to compress')
    return images

  def encode(self, images, batch_size: int = 1, names=(),
             progress: Optional[Callable[[int, int], None]] = None) -> bytes:
    """uint8 [N, H, W, C] -> the compressed file's bytes. Sets ``last_report``: the bits the
    coding added per batch, and the seed bits stored."""
    images = self.check_images(images)
    if batch_size < 1:
      raise CodecError(f'batch_size must be >= 1, got {batch_size}')
    count = len(images)
    seed = seed_words(_seed_size(count, batch_size, self.image_shape))
    stack = Stack(seed)
    self._programs.rows = min(batch_size, count)
    growth = []
    with jax.default_device(self._cpu):
      for start, stop in batches(count, batch_size):
        before = stack.num_bits()
        try:
          self.encode_batch(stack, images[start:stop])
        except (CoderRangeError, flow_coding.GridError) as e:
          raise CodecError(f'images {start}..{stop - 1} cannot be coded by this model: '
                           f'{e}') from None
        growth.append(stack.num_bits() - before)
        if progress:
          progress(stop, count)
    words = stack.words()
    prefix = _common_prefix(words, seed)
    payload = words[prefix:].astype('<u4').tobytes()
    header = Header(count, self.image_shape, self.config.num_levels, batch_size, prefix,
                    self.fingerprint, _digest(images.tobytes()), tuple(names))
    body = header.pack() + payload
    self.last_report = {'batch_bits': growth, 'seed_bits_stored': 32 * (len(words) - prefix)
                        - int(np.sum(growth)), 'file_bytes': len(body) + DIGEST}
    return body + _digest(body)

  def read_header(self, data: bytes) -> Header:
    """The header of a file this model can decode; CodecError says why it cannot."""
    return self._open(data)[0]

  def _open(self, data: bytes):
    """-> (Header, the payload's words uint32) of a file this model can decode here."""
    data = bytes(data)
    header, at = Header.unpack(data)
    if len(data) < at + DIGEST or (len(data) - at - DIGEST) % 4:
      raise CodecError('the file is truncated or corrupted (its length does not add up)')
    if _digest(data[:-DIGEST]) != data[-DIGEST:]:
      raise CodecError('the file is truncated or corrupted (its checksum does not match)')
    if header.fingerprint != self.fingerprint:
      raise CodecError('the file was compressed with another model (its fingerprint differs '
                       'from this checkpoint\'s): decode it with the --workdir and --step that '
                       'encoded it')
    if (header.grid_bits, header.sigma_log2) != (GRID_BITS, SIGMA_LOG2):
      raise CodecError(f'the file was coded on a 2^-{header.grid_bits} grid with sigma '
                       f'2^{header.sigma_log2}; this flowpp_jax codes 2^-{GRID_BITS}, '
                       f'2^{SIGMA_LOG2}')
    return header, np.frombuffer(data[at:-DIGEST], '<u4').astype(np.uint32)

  def decode(self, data: bytes,
             progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """The compressed file's bytes -> uint8 [N, H, W, C], exactly the images encoded."""
    header, payload = self._open(data)
    seed = seed_words(_seed_size(header.count, header.batch_size, self.image_shape))
    stack = Stack(np.concatenate([seed[:header.seed_prefix], payload]), decoder=True)
    self._programs.rows = min(header.batch_size, header.count)
    out = np.empty((header.count, *self.image_shape), np.uint8)
    done = 0
    with jax.default_device(self._cpu):
      for start, stop in reversed(batches(header.count, header.batch_size)):
        try:
          out[start:stop] = self.decode_batch(stack, stop - start)
        except (CoderRangeError, flow_coding.GridError):
          raise CodecError('decoding went wrong: ' + _MISMATCH) from None
        done += stop - start
        if progress:
          progress(done, header.count)
    if _digest(out.tobytes()) != header.images_digest or not np.array_equal(stack.words(),
                                                                            seed):
      raise CodecError('the decoded images do not match the checksum the encoder stored: '
                       + _MISMATCH)
    return out


def _seed_size(count, batch_size, image_shape) -> int:
  return SEED_WORDS_PER_DIM * min(batch_size, count) * int(np.prod(image_shape))


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
  n = min(len(a), len(b))
  differ = np.flatnonzero(a[:n] != b[:n])
  return int(differ[0]) if len(differ) else n


class Progress:
  """progress(done, total) -> a line with images/s and the ETA, at most every ``every`` s. The
  rate counts from the first batch's end, which includes compiling."""

  def __init__(self, verb: str, write: Callable[[str], None], every: float = 5.0):
    self.verb, self.write, self.every = verb, write, every
    self.start = time.perf_counter()
    self.first = None  # (time, done) at the first batch's end

  def __call__(self, done: int, total: int) -> None:
    now = time.perf_counter()
    if self.first is None:
      self.first = self.last = now, done
      self.write(f'{self.verb} {done}/{total} images (the first batch, with compiling: '
                 f'{now - self.start:.1f} s)')
      return
    if now - self.last[0] < self.every and done < total:
      return
    self.last = now, done
    rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
    self.write(f'{self.verb} {done}/{total} images, {rate:.1f} images/s, '
               f'ETA {(total - done) / rate:.0f} s')
