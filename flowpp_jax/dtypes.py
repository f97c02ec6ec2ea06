"""The dtype rule of the flow math: float32, or float64 when the inputs are float64.

Conditioner nets may compute in bfloat16, but values, log-dets and the mixture math are
promoted back to at least float32; float64 inputs (as in the Jacobian tests) stay float64.
"""
import jax.numpy as jnp


def at_least_float32(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def compute_dtype(input_dtype, requested):
  """The dtype a layer computes in: ``requested`` when it is narrower than float32
  (bfloat16), else at least the input's precision."""
  if jnp.finfo(requested).bits < 32:
    return jnp.dtype(requested)
  return jnp.promote_types(input_dtype, requested)
