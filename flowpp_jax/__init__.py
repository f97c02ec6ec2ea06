"""flowpp_jax: Flow++ (Ho et al., ICML 2019) in JAX/Flax."""
__version__ = '0.1.0'


def load(workdir, step=None):
  """The trained model of a run: see flowpp_jax.api.TrainedModel."""
  from flowpp_jax import (api)  # pylint: disable=g-import-not-at-top  (keeps `import flowpp_jax` light)
  return api.load(workdir, step)


def enable_compilation_cache(root=None):
  """Keeps compiled programs on disk for the next process, in this machine's folder under
  ``root`` (default: ~/.cache/flowpp_jax/xla), as the commands do; returns the folder. It
  changes jax's configuration for the whole process: see flowpp_jax.runtime.compile_cache."""
  from flowpp_jax.runtime import compile_cache  # pylint: disable=g-import-not-at-top
  return compile_cache.enable(root)
