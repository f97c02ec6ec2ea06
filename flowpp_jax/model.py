"""FlowPlusPlus: the whole model, log p(x + u) - log q(u | x) for uint8 images, and its inverse.

Built from the ``model`` part of a config (see configs/): main flow and dequantizer layouts,
conditioner sizes, dropout, compute dtype. All outputs are per example.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flowpp_jax import architecture, objective
from flowpp_jax.bijectors import Chain, LogitPreprocess
from flowpp_jax.nn.layers import normal_init
from flowpp_jax.dequantizer import (UniformDequantizer, VariationalDequantizer,
                                    standard_normal_logpdf)

DEQUANTIZERS = ('variational', 'uniform')
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# encode() keeps x + u at least this far inside the bin [x, x + 1), so decode's floor is exact
# even after the float32 rounding of a deep inverse (measured errors are ~1e-4 in data units).
ENCODE_MARGIN = 1.0 / 64


def validate_config(cfg) -> None:
  """Raises ValueError naming the field when the model config is inconsistent."""
  h, w, c = cfg.image_shape
  if min(h, w, c) < 1:
    raise ValueError(f'model.image_shape must be positive, got {tuple(cfg.image_shape)}')
  if not 2 <= cfg.num_levels <= 256:
    raise ValueError(f'model.num_levels must be in [2, 256], got {cfg.num_levels}')
  if not 0.0 <= cfg.dropout < 1.0:
    raise ValueError(f'model.dropout must be in [0, 1), got {cfg.dropout}')
  if cfg.norm not in architecture.NORMS:
    raise ValueError(f'model.norm must be one of {architecture.NORMS}, got {cfg.norm!r}')
  if cfg.checkerboard not in architecture.CHECKERBOARDS:
    raise ValueError(f'model.checkerboard must be one of {architecture.CHECKERBOARDS}, '
                     f'got {cfg.checkerboard!r}')
  if cfg.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f'model.compute_dtype must be one of {tuple(COMPUTE_DTYPES)}, '
                     f'got {cfg.compute_dtype!r}')
  for field in ('remat', 'scan_layers'):
    if not isinstance(cfg[field], bool):
      raise ValueError(f'model.{field} must be True or False, got {cfg[field]!r}')
  architecture.validate_flow_config('model.main', cfg.main, cfg.image_shape)
  if cfg.dequant.kind not in DEQUANTIZERS:
    raise ValueError(f'model.dequant.kind must be one of {DEQUANTIZERS}, '
                     f'got {cfg.dequant.kind!r}')
  if cfg.dequant.kind == 'variational':
    architecture.validate_flow_config('model.dequant', cfg.dequant, cfg.image_shape)
    if any(kind != 'checker' for kind, _ in architecture.parse_layout(cfg.dequant.layout)):
      # The context features are laid out like the checkerboard halves.
      raise ValueError('model.dequant.layout may only hold checkerN stages, got '
                       f'{cfg.dequant.layout!r}')


class FlowPlusPlus(nn.Module):
  """Flow++ on images [B, H, W, C] uint8 with values in [0, num_levels).

  Variables: params['main_flow'] and params['dequantizer']. ``init`` is data-dependent:
  call it on a real batch with ``deterministic=False`` and rngs {'params', 'dropout'}.
  """
  config: Any  # the ``model`` ConfigDict
  # Attention as one block of XLA operations (no query loop, no cuDNN): the same function,
  # for XLA's cost analysis (flowpp_jax/bench.py).
  one_block_attention: bool = False

  def __post_init__(self):
    validate_config(self.config)  # bad input fails where the model is made, in one line
    super().__post_init__()

  def setup(self):
    cfg = self.config
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    self.main_flow = Chain(architecture.build_layers(
        cfg.main, checkerboard=cfg.checkerboard, norm=cfg.norm, dropout=cfg.dropout,
        dtype=dtype, remat=cfg.remat, scan=cfg.scan_layers,
        one_block_attention=self.one_block_attention, first=[LogitPreprocess(cfg.num_levels)]))
    if cfg.dequant.kind == 'variational':
      self.dequantizer = VariationalDequantizer(cfg.dequant, cfg.num_levels, cfg.checkerboard,
                                                cfg.norm, cfg.dropout, dtype, cfg.remat,
                                                cfg.scan_layers, self.one_block_attention)
    else:
      self.dequantizer = UniformDequantizer()

  @property
  def num_dims(self) -> int:
    return int(np.prod(self.config.image_shape))

  def check_images(self, x):
    """Raises ValueError unless x is uint8 of shape [B, H, W, C] matching the config."""
    shape = tuple(self.config.image_shape)
    if getattr(x, 'dtype', None) != jnp.uint8:
      raise ValueError(f'images must be uint8, got {getattr(x, "dtype", type(x).__name__)}')
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
      raise ValueError(f'images must have shape [B, {", ".join(map(str, shape))}], '
                       f'got {list(x.shape)}')

  def check_values(self, x):
    """Raises ValueError unless the values of concrete images x are below num_levels."""
    if np.size(x) and np.max(x) >= self.config.num_levels:
      raise ValueError(f'image values must be < num_levels = {self.config.num_levels}, got '
                       f'{np.max(x)}')

  @property
  def latent_shape(self) -> tuple:
    """[H, W, C] of z: the image shape after the main flow's squeezes."""
    return architecture.output_shape(self.config.main.layout, self.config.image_shape)

  def check_latents(self, z):
    shape = self.latent_shape
    if z.ndim != 4 or tuple(z.shape[1:]) != shape:
      raise ValueError(f'latents must have shape [B, {", ".join(map(str, shape))}], '
                       f'got {list(z.shape)}')

  def __call__(self, x, rng, *, deterministic=True):
    """x uint8 [B, H, W, C] -> dict of [B] arrays: log_px = log p(x + u), log_qu = log q(u|x)
    and bpd = -(log_px - log_qu) / (D ln 2), for one u ~ q(u | x) drawn with ``rng``."""
    self.check_images(x)
    x = x.astype(jnp.float32)
    u, log_qu = self.dequantizer(x, rng, deterministic=deterministic)
    log_px = self.log_density(x + u, deterministic=deterministic)
    bpd = objective.bits_per_dim(log_px - log_qu, self.num_dims)
    return {'log_px': log_px, 'log_qu': log_qu, 'bpd': bpd}

  def log_density(self, y, *, deterministic=True):
    """log p(y) of the continuous main flow: y float [B, H, W, C] in [0, L] -> [B]."""
    z, log_det = self.main_flow(y, deterministic=deterministic)
    return standard_normal_logpdf(z) + log_det

  def encode(self, x, rng):
    """x uint8 [B, H, W, C] -> z float32 [B, *latent_shape]: the latent of x + u, u ~ q(u|x).

    u is kept ENCODE_MARGIN inside its bin so that decode(encode(x)) == x exactly.
    """
    self.check_images(x)
    x = x.astype(jnp.float32)
    u, _ = self.dequantizer(x, rng)
    z, _ = self.main_flow(x + jnp.clip(u, ENCODE_MARGIN, 1.0 - ENCODE_MARGIN))
    return z

  def decode(self, z):
    """z [B, *latent_shape] -> uint8 [B, H, W, C]: inverts the main flow, floors to the bin."""
    self.check_latents(z)
    y, _ = self.main_flow(z.astype(jnp.float32), inverse=True)
    return jnp.clip(jnp.floor(y), 0, self.config.num_levels - 1).astype(jnp.uint8)

  def latents(self, rng, n: int, temperature: float = 1.0):
    """n latents [n, *latent_shape] ~ N(0, temperature^2 I) (no parameters read)."""
    return normal_init(temperature)(rng, (n, *self.latent_shape))

  def sample(self, rng, n: int, temperature: float = 1.0):
    """n uint8 images [n, H, W, C] from z ~ N(0, temperature^2 I)."""
    return self.decode(self.latents(rng, n, temperature))


def init_variables(model, images, params_key, dropout_key=None, noise_key=None):
  """``model.init`` on ``images`` (uint8 [B, H, W, C]) with dropout on, the data-dependent
  init of the official code. The dropout masks and the dequantization noise are drawn from
  ``dropout_key`` and ``noise_key``, by default ``params_key``."""
  dropout_key = params_key if dropout_key is None else dropout_key
  noise_key = params_key if noise_key is None else noise_key
  return model.init({'params': params_key, 'dropout': dropout_key}, images, noise_key,
                    deterministic=False)


def inversion_errors(model, params, y):
  """(max |y - f^-1(f(y))|, max |log det f(y) + log det f^-1(f(y))|) for real-valued y
  [B, H, W, C] in [0, num_levels), f the main flow, in data units. decode(encode(x)) == x
  needs the first well below the encode margin."""
  flow = lambda module, y, inverse: module.main_flow(y, inverse=inverse)
  z, log_det = model.apply({'params': params}, y, inverse=False, method=flow)
  y_back, inverse_log_det = model.apply({'params': params}, z, inverse=True, method=flow)
  return jnp.max(jnp.abs(y_back - y)), jnp.max(jnp.abs(log_det + inverse_log_det))


def abstract_params(model_cfg):
  """The params pytree of FlowPlusPlus(model_cfg) as ShapeDtypeStructs, traced, never
  allocated (the shapes do not depend on the batch: two images stand in)."""
  model = FlowPlusPlus(model_cfg)
  images = jax.ShapeDtypeStruct((2, *model_cfg.image_shape), jnp.uint8)
  init = lambda x: init_variables(model, x, jax.random.PRNGKey(0))
  return jax.eval_shape(init, images)['params']
