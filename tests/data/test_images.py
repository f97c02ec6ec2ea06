"""Sample grids: levels stretched to 0..255, tiles where they belong, PNGs that decode to
exactly the grid."""
import io

import numpy as np
from PIL import Image
import pytest

from flowpp_jax.data import images


def test_to_display_stretches_levels_to_0_255():
  levels = np.arange(17, dtype=np.uint8).reshape(1, 1, 17, 1)
  shown = images.to_display(levels, 17)
  assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255
  assert np.all(np.diff(shown.ravel().astype(int)) > 0)
  assert (images.to_display(levels, 256) == levels).all()


def test_make_grid_places_each_tile():
  tiles = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1) + 1
  grid = images.make_grid(tiles)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)  # 3 columns, 2 rows, padding 1
  for i, tile in enumerate(tiles):
    r, c = divmod(i, 3)
    np.testing.assert_array_equal(grid[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3], tile)
  assert grid[0].max() == 0 and grid[-1, 9:].max() == 0  # padding, and the empty sixth tile


@pytest.mark.parametrize('channels', [1, 3])
def test_png_decodes_to_exactly_the_image(channels):
  image = np.random.default_rng(channels).integers(0, 256, (7, 5, channels), dtype=np.uint8)
  decoded = np.asarray(Image.open(io.BytesIO(images.encode_png(image))))
  np.testing.assert_array_equal(decoded.reshape(image.shape), image)


def test_png_refuses_other_dtypes_and_shapes():
  with pytest.raises(ValueError, match='uint8'):
    images.encode_png(np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match='uint8'):
    images.encode_png(np.zeros((2, 2, 2), np.uint8))
