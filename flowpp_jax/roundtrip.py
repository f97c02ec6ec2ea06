"""python -m flowpp_jax.roundtrip: how exactly the model inverts (flowpp_jax/tools/roundtrip.py)."""
if __name__ == '__main__':
  from flowpp_jax.tools import roundtrip
  roundtrip.run()
