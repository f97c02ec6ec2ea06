"""python -m flowpp_jax.import_weights: the authors' weights as a workdir, and back
(flowpp_jax/tools/import_weights.py)."""
if __name__ == '__main__':
  from flowpp_jax.tools import import_weights
  import_weights.run()
