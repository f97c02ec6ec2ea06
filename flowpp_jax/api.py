"""The Python API of a trained run: ``flowpp_jax.load(workdir)``.

  model = flowpp_jax.load('workdirs/digits')
  nats = model.log_prob(images, seed=0, num_iw_samples=64)   # uint8 [B, H, W, C] -> [B]
  images = model.sample(16, seed=0, temperature=1.0)         # uint8 [16, H, W, C]
  assert (model.decode(model.encode(images, seed=0)) == images).all()
  data = model.compress(images)                               # bytes: a self-describing file
  assert (model.decompress(data) == images).all()

Everything uses the EMA parameters of the run's latest checkpoint (or of ``step``).
"""
import jax
import numpy as np

from flowpp_jax import model as model_lib
from flowpp_jax import objective
from flowpp_jax.runtime import parallel
from flowpp_jax.trainer import checkpointing, experiment, sampling, steps


class TrainedModel:
  """A FlowPlusPlus with the EMA parameters of one checkpoint. Methods take and return numpy
  arrays; wrong dtypes or shapes raise ValueError."""

  def __init__(self, workdir, step=None):
    self.config = experiment.load_config(workdir)
    self.model = model_lib.FlowPlusPlus(self.config.model)
    checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
    try:
      step = checkpoints.latest_step() if step is None else step
      if step is None:
        raise ValueError(f'no checkpoint in {checkpoints.directory}')
      # Read as recorded: tracing the model for its shapes would take longer than reading.
      state = checkpoints.restore_state_dict(step, self.config.model)
    finally:
      checkpoints.close()
    self.step = int(state['step'])
    self.params = jax.device_put(state['ema_params'])
    self._log_probs = {}  # num_samples -> log_prob's program
    self._encode = jax.jit(lambda params, x, key: self.model.apply(
        {'params': params}, x, key, method=self.model.encode))
    self._decode = jax.jit(lambda params, z: self.model.apply(
        {'params': params}, z, method=self.model.decode))
    self._samplers = {}
    self._replicated = None  # the params on every local device, made on first use
    self._codec = None

  @property
  def image_shape(self) -> tuple:
    return tuple(self.config.model.image_shape)

  @property
  def latent_shape(self) -> tuple:
    return self.model.latent_shape

  def log_prob(self, images, seed: int = 0, num_iw_samples: int = 1):
    """images uint8 [B, H, W, C] -> float64 [B]: the importance-weighted lower bound on
    log P(x) in nats with K = num_iw_samples dequantization draws (K = 1: the ELBO).
    Image i's draws depend only on (seed, i)."""
    images = self._check_images(images)
    if num_iw_samples < 1:
      raise ValueError(f'num_iw_samples must be >= 1, got {num_iw_samples}')
    keys = np.asarray(steps.example_keys(seed, steps.EVAL_TAG, np.arange(len(images))))
    k = int(num_iw_samples)
    if k not in self._log_probs:
      self._log_probs[k] = parallel.over_examples(lambda params, images, keys: objective.iw_bound(
          steps.log_weights(self.model, params, images, keys, num_samples=k)))
    return np.asarray(self._log_probs[k](self.replicated_params(), images, keys), np.float64)

  def bpd(self, images, seed: int = 0, num_iw_samples: int = 1):
    """Bits per dimension [B] of the bound in log_prob."""
    return objective.bits_per_dim(self.log_prob(images, seed, num_iw_samples),
                                  int(np.prod(self.image_shape)))

  def sample(self, n: int, seed: int = 0, temperature: float = 1.0):
    """n uint8 images [n, H, W, C] from z ~ N(0, temperature^2 I)."""
    if n < 1 or not temperature > 0:
      raise ValueError(f'need n >= 1 and temperature > 0, got {n}, {temperature}')
    if n not in self._samplers:
      self._samplers[n] = sampling.make_sampler(self.model, n)
    return self._samplers[n](self.replicated_params(), seed, temperature)

  def replicated_params(self):
    """The EMA parameters with a copy on every local device, made on the first call."""
    if self._replicated is None:
      self._replicated = parallel.replicate(self.params)
    return self._replicated

  def encode(self, images, seed: int = 0):
    """images uint8 [B, H, W, C] -> latents float32 [B, *latent_shape]; decode inverts it
    exactly."""
    images = self._check_images(images)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), steps.EVAL_TAG)
    return np.asarray(self._encode(self.params, images, key))

  def decode(self, z):
    """latents [B, *latent_shape] -> uint8 images [B, H, W, C]."""
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.floating):
      raise ValueError(f'latents must be floating point, got {z.dtype}')
    self.model.check_latents(z)
    return np.asarray(self._decode(self.params, z.astype(np.float32)))

  @property
  def codec(self):
    """The lossless coder of this model (flowpp_jax.compression.codec), made on first use."""
    if self._codec is None:
      from flowpp_jax.compression import codec  # pylint: disable=g-import-not-at-top
      self._codec = codec.ImageCodec(self.config.model, self.params)
    return self._codec

  def compress(self, images, batch_size: int = 1, names=(), progress=None) -> bytes:
    """images uint8 [N, H, W, C] -> the bytes of a compressed file (about the model's ELBO
    in bits per image, plus initial bits that grow with ``batch_size``). ``names``: file
    names to keep in the file; ``progress(done, total)`` is called after each batch."""
    return self.codec.encode(images, batch_size, names, progress)

  def decompress(self, data: bytes, progress=None):
    """The bytes of ``compress``, from this machine or another -> exactly its images, uint8
    [N, H, W, C]. Raises CodecError (a ValueError) for another model's file or a damaged one."""
    return self.codec.decode(data, progress)

  def _check_images(self, images):
    images = np.asarray(images)
    self.model.check_images(images)
    self.model.check_values(images)
    return images


def load(workdir, step=None) -> TrainedModel:
  """The trained model in ``workdir`` (a --workdir of ``--mode=train``)."""
  return TrainedModel(workdir, step)
