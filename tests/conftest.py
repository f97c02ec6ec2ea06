"""Shared fixtures: tiny model configs that exercise every part of the real architecture."""
import os

# The suite's time is almost all XLA:CPU compilation; LLVM's optimisation passes are most of
# that (a tiny model's init compiles in 10 s instead of 24 s without them) and change no
# result the tests check. Set before JAX creates its CPU backend.
os.environ.setdefault('XLA_FLAGS', '--xla_backend_optimization_level=0')

import jax  # pylint: disable=g-import-not-at-top
import pytest

from flowpp_jax import config_defaults as d


def tiny_model_config(image_shape=(8, 8, 3), *, num_levels=256, main_layout='checker2 s2d channel1',
                      dequant_layout='checker1', dequant_kind='variational', coupling='mixlogistic',
                      mixer='attention', pointwise=True, weight_norm=False, dropout=0.1,
                      compute_dtype='float32', norm='norm', checkerboard='columns'):
  net = dict(filters=8, blocks=1, components=4, heads=2, pointwise=pointwise,
             weight_norm=weight_norm, coupling=coupling, mixer=mixer)
  return d.model_config(
      image_shape=image_shape, num_levels=num_levels, dropout=dropout,
      compute_dtype=compute_dtype, norm=norm, checkerboard=checkerboard,
      main=d.flow_config(layout=main_layout, **net),
      dequant=d.dequant_config(kind=dequant_kind, layout=dequant_layout, context_features=8,
                               context_blocks=1, context_layer_norm=True,
                               context_mixer='attention', **net))


def init_model(model, images, seed=0):
  """Data-dependent init on ``images`` with dropout on, as the trainer does."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  return model.init({'params': k1, 'dropout': k2}, images, k3, deterministic=False)


@pytest.fixture
def tiny_config():
  return tiny_model_config()
