"""Sample grids as PNG files."""
import io
import math

from etils import epath
import numpy as np
from PIL import Image

from flowpp_jax.runtime import fileio


def to_display(images, num_levels: int):
  """uint8 [N, H, W, C] with values in [0, num_levels) -> uint8 in [0, 255] for viewing."""
  images = np.asarray(images)
  if num_levels == 256:
    return images
  return np.round(images.astype(np.float32) * (255.0 / (num_levels - 1))).astype(np.uint8)


def make_grid(images, pad: int = 1):
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image, with
  cols = ceil(sqrt(N)) and padding of 0 between the tiles."""
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = image
  return grid


def encode_png(image) -> bytes:
  """uint8 [H, W, 1 or 3] -> PNG bytes (8-bit grayscale or RGB)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
    raise ValueError(f'PNG needs uint8 [H, W, 1|3], got {image.dtype} {list(image.shape)}')
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()


def save_samples(directory, name: str, samples, num_levels: int, scale: int = 1) -> epath.Path:
  """Writes DIR/<name>.png (the grid, levels stretched to 0..255, each pixel ``scale`` times
  enlarged) and DIR/<name>.npy (the raw uint8 samples). DIR may be a gs:// URI. Returns the
  PNG's path."""
  directory = fileio.makedirs(directory)
  samples = np.asarray(samples)
  with (directory / f'{name}.npy').open('wb') as f:  # np.save(path) would open() a URI
    np.save(f, samples)
  grid = make_grid(to_display(samples, num_levels))
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  path = directory / f'{name}.png'
  path.write_bytes(encode_png(grid))
  return path
