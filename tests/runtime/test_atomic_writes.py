"""Every file a command writes is written whole or not at all (fileio.replaced): each writer,
interrupted halfway, leaves neither its file nor a partial one, and an existing file as it
was."""
import ml_collections
import numpy as np
import pytest
from PIL import Image

from conftest import initialised_workdir
from flowpp_jax import config_defaults as d
from flowpp_jax.data import datasets, own_images
from flowpp_jax.runtime import fileio
from flowpp_jax.data import images as image_files
from flowpp_jax.official import weights as official_weights


class Interrupted(BaseException):
  """A stand-in for Ctrl-C (KeyboardInterrupt) that the test can tell from the rest."""


def interrupt_after(calls: int, function):
  """``function`` that raises Interrupted on call ``calls`` + 1 (after writing its part)."""
  count = [0]

  def wrapper(*args, **kwargs):
    count[0] += 1
    if count[0] > calls:
      raise Interrupted
    return function(*args, **kwargs)
  return wrapper


def assert_left_nothing(directory, *kept):
  assert sorted(p.name for p in directory.iterdir()) == sorted(kept)


@pytest.mark.parametrize('folder', [False, True])
def test_replaced_keeps_the_old_file_or_writes_the_new_one(tmp_path, folder):
  target = tmp_path / 'out'
  with pytest.raises(Interrupted), fileio.replaced(target, folder=folder) as partial:
    (partial / 'a' if folder else partial).write_text('half')
    raise Interrupted
  assert_left_nothing(tmp_path)
  fileio.write_text(tmp_path / 'kept.txt', 'old')
  with pytest.raises(Interrupted), fileio.replaced(tmp_path / 'kept.txt') as partial:
    partial.write_text('new')
    raise Interrupted
  assert (tmp_path / 'kept.txt').read_text() == 'old'
  fileio.write_text(tmp_path / 'kept.txt', 'new')
  assert (tmp_path / 'kept.txt').read_text() == 'new'
  assert_left_nothing(tmp_path, 'kept.txt')


def test_decoded_images_interrupted(tmp_path, monkeypatch):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  monkeypatch.setattr(Image.Image, 'save', interrupt_after(2, Image.Image.save))
  with pytest.raises(Interrupted):
    image_files.write_images(str(tmp_path / 'pngs'), images, ())
  monkeypatch.setattr(np, 'save', interrupt_after(0, np.save))
  with pytest.raises(Interrupted):
    image_files.write_images(str(tmp_path / 'images.npy'), images, ())
  assert_left_nothing(tmp_path)
  monkeypatch.undo()
  image_files.write_images(str(tmp_path / 'pngs'), images, ())
  assert len(list((tmp_path / 'pngs').iterdir())) == 5


def test_export_interrupted(tmp_path, monkeypatch):
  initialised_workdir(tmp_path / 'run')

  def half_written(f, **arrays):
    f.write(b'PK\x03\x04 half of a zip')
    raise Interrupted
  monkeypatch.setattr(np, 'savez', half_written)
  with pytest.raises(Interrupted):
    official_weights.export_weights(tmp_path / 'run', str(tmp_path / 'out.npz'))
  assert_left_nothing(tmp_path, 'run')


def test_image_cache_interrupted(tmp_path, monkeypatch):
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(6):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f'{i}.png')
  config = d.base_config()
  config.update(dataset=f'folder:{folder}', batch_size=2)
  config.model = ml_collections.ConfigDict({'image_shape': (8, 8, 3), 'num_levels': 256})
  config.data.update(cache_dir=str(tmp_path / 'cache'), test_fraction=0.5)
  monkeypatch.setattr(own_images, '_decode', interrupt_after(3, own_images._decode))
  with pytest.raises(Interrupted):
    datasets.open_data(config, None, lambda line: None)
  assert_left_nothing(tmp_path / 'cache')
