"""python -m flowpp_jax.prepare: writes a tfds data set (flowpp_jax/data/prepare.py)."""
if __name__ == '__main__':
  from flowpp_jax.data import prepare
  prepare.run()
