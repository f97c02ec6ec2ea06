"""flowpp_jax: Flow++ (Ho et al., ICML 2019) in JAX/Flax."""
__version__ = '0.1.0'
