"""Images as files: sample grids as PNG, and the image files that compression reads and
writes (a .npy of uint8 [N, H, W, C], or a folder of PNGs)."""
import io
import math
import pathlib

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
  path = directory / f'{name}.png'
  path.write_bytes(encode_png(sample_grid(samples, num_levels, scale)))
  return path


def sample_grid(samples, num_levels: int, scale: int = 1):
  """uint8 [N, H, W, C] samples -> the uint8 [rows, cols, C] grid that save_samples writes:
  levels stretched to 0..255, each pixel ``scale`` times enlarged."""
  grid = make_grid(to_display(np.asarray(samples), num_levels))
  return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


_MODES = {1: 'L', 3: 'RGB'}


def read_images(path: str, shape):
  """IMAGES -> (uint8 [N, H, W, C], names: the PNG files' names, () for an array)."""
  source = pathlib.Path(path)
  if source.is_dir():
    files = sorted(p for p in source.iterdir() if p.suffix.lower() == '.png')
    if not files:
      raise ValueError(f'{path} holds no .png files')
    return np.stack([_read_png(p, shape) for p in files]), tuple(p.name for p in files)
  if source.suffix != '.npy':
    raise ValueError(f'{path}: IMAGES must be a .npy file or a folder of PNGs')
  try:
    images = np.load(source, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  return images, ()


def _read_png(path: pathlib.Path, shape) -> np.ndarray:
  height, width, channels = shape
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      array = np.asarray(image)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'cannot read image {path}: {e}') from None
  if mode != _MODES.get(channels):
    raise ValueError(f'{path} is a {mode} image; the model codes {_MODES.get(channels, "?")} '
                     f'images ({channels} channel(s)): convert it first')
  if array.shape[:2] != (height, width):
    raise ValueError(f'{path} is {array.shape[1]}x{array.shape[0]}, the model codes '
                     f'{width}x{height} images')
  return array.reshape(height, width, channels)


def write_images(path: str, images: np.ndarray, names) -> None:
  """uint8 [N, H, W, C] -> IMAGES_OUT (a .npy or a new folder of PNGs), written beside and
  renamed into place."""
  folder = not path.endswith('.npy')
  with fileio.replaced(path, folder=folder) as partial:
    if not folder:
      with open(partial, 'wb') as f:
        np.save(f, images)
      return
    names = names or tuple(f'{i:05d}.png' for i in range(len(images)))
    for name, image in zip(names, images):
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image,
                      _MODES[image.shape[-1]]).save(partial / name)
