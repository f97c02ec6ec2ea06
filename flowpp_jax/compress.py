"""python -m flowpp_jax.compress: lossless compression with a trained model
(flowpp_jax/tools/compress.py)."""
if __name__ == '__main__':
  from flowpp_jax.tools import compress
  compress.run()
