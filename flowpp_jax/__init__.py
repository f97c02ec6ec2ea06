"""flowpp_jax: Flow++ (Ho et al., ICML 2019) in JAX/Flax."""
__version__ = '0.1.0'


def load(workdir, step=None):
  """The trained model of a run: see flowpp_jax.api.TrainedModel."""
  from flowpp_jax import (api)  # pylint: disable=g-import-not-at-top  (keeps `import flowpp_jax` light)
  return api.load(workdir, step)
