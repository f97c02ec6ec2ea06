"""``--mode=sample``: images from the EMA parameters, saved as a PNG grid and a raw array in
WORKDIR/samples/."""
import jax
import numpy as np

from flowpp_jax.data import images as images_lib
from flowpp_jax.runtime import fileio, parallel
from flowpp_jax.trainer import steps


def latents_fn(model, n: int):
  """(key, temperature) -> the n latents of a sample, at the temperature."""
  return lambda key, temperature: model.apply({}, key, n, temperature, method=model.latents)


def decode_fn(model):
  """(params, latents) -> uint8 images: the flow run backwards."""
  return lambda params, z: model.apply({'params': params}, z, method=model.decode)


def make_sampler(model, n: int):
  """(p_params, seed, temperature, step) -> n uint8 images [n, H, W, C], compiled once.

  ``p_params``: the parameters replicated over the local devices (``parallel.replicate``,
  or the trainer's replicated EMA parameters). The n latents are drawn at once from the
  (seed, step) key, then decoded with the examples split over this process's devices
  (``parallel.over_examples``): the same (seed, step) gives the same images on any number
  of devices.
  """
  draw_latents = jax.jit(latents_fn(model, n))
  decode = parallel.over_examples(decode_fn(model))

  def draw(p_params, seed: int, temperature: float, step: int = 0):
    key = jax.random.fold_in(
        jax.random.fold_in(jax.random.PRNGKey(seed), steps.SAMPLE_TAG), step)
    return decode(p_params, np.asarray(draw_latents(key, np.float32(temperature))))
  return draw


def save(workdir, step: int, samples, num_levels: int, temperature: float):
  """WORKDIR/samples/step_<step>_t<T>.png (+ .npy); returns the PNG path (process 0 only)."""
  if jax.process_index() != 0:
    return None
  height = samples.shape[1]
  return images_lib.save_samples(
      fileio.path(workdir) / 'samples', f'step_{step:08d}_t{temperature:g}', samples, num_levels,
      scale=max(1, 64 // height))
