"""Your own images: a folder of PNGs and JPEGs and NumPy arrays, decoded once into the cache,
split deterministically and pinned by the workdir's record; n-bit reduction; bad input."""
import types

import ml_collections
import numpy as np
from PIL import Image
import pytest

from flowpp_jax import config_defaults as d
from flowpp_jax.data import datasets, own_images


def make_config(dataset, tmp_path, shape=(8, 8, 3), batch_size=4, **data):
  config = d.base_config()
  config.dataset = dataset
  config.batch_size = batch_size
  config.model = ml_collections.ConfigDict({'image_shape': shape, 'num_levels': 256})
  config.data.cache_dir = str(tmp_path / 'cache')
  config.data.update(data)
  return config


def open_data(config, workdir=None):
  lines = []
  return datasets.open_data(config, workdir, lines.append), lines


def every(source):
  return source[np.arange(len(source))]


def write_images(folder, arrays, suffix='.png'):
  """Writes uint8 [H, W, C] arrays as image files 000.png, 001.png ... in ``folder``."""
  folder.mkdir(parents=True, exist_ok=True)
  for i, array in enumerate(arrays):
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    image.save(folder / f'{i:03d}{suffix}', quality=95)


def random_images(n, shape=(8, 8, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def test_reduce_bits_is_the_floor_of_x_over_2_to_the_shift():
  source = datasets.ArraySource(np.arange(256, dtype=np.uint8).reshape(256, 1, 1, 1))
  for bits in (5, 3, 1):
    reduced = every(datasets.reduce_bits(source, 8 - bits)).ravel()
    np.testing.assert_array_equal(reduced, np.floor(np.arange(256) / 2 ** (8 - bits)))
    assert reduced.dtype == np.uint8 and reduced.max() == 2 ** bits - 1


def test_describe_applies_bits_and_refuses_where_they_do_not_apply(tmp_path):
  config = make_config('cifar10', tmp_path, bits=5)
  assert datasets.describe(config).num_levels == 32
  assert datasets.describe(config).image_shape == (32, 32, 3)
  with pytest.raises(ValueError, match='digits has 17 levels: set data.bits to 0'):
    datasets.describe(make_config('digits', tmp_path, bits=3))
  with pytest.raises(ValueError, match=r'data.bits \(6\) must be at most data.stored_bits'):
    datasets.describe(make_config('npy:/x.npy', tmp_path, bits=6, stored_bits=5))
  own = make_config('folder:/x', tmp_path, shape=(16, 8, 1), stored_bits=5)
  assert (datasets.describe(own).num_levels, datasets.describe(own).image_shape) == (32, (16, 8, 1))
  with pytest.raises(ValueError, match='names no path'):
    datasets.describe(make_config('folder:', tmp_path))


def test_folder_of_pngs_and_jpegs_is_read_recursively_and_cached(tmp_path):
  pngs, jpegs = random_images(6, seed=1), np.full((4, 8, 8, 3), 77, np.uint8)
  write_images(tmp_path / 'images', pngs)
  write_images(tmp_path / 'images' / 'deeper' / 'still', jpegs, suffix='.JPG')
  config = make_config(f'folder:{tmp_path / "images"}', tmp_path, test_fraction=0.2)
  data, lines = open_data(config)
  assert 'decoded 10 images' in lines[0] and 'images/s' in lines[0]
  assert (len(data.train), len(data.test), data.eval_split) == (8, 2, 'test')
  # Sorted paths: 000.png .. 005.png, then deeper/still/000.JPG ..; the split holds out 2.
  both = np.concatenate([every(data.train), every(data.test)])
  names = data.record['train'] + data.record['test']
  expected = {f'{i:03d}.png': pngs[i] for i in range(6)}
  for name, image in zip(names, both):
    if name.endswith('.png'):
      np.testing.assert_array_equal(image, expected[name])  # PNG is lossless
    else:
      assert np.abs(image.astype(int) - 77).max() <= 2      # a flat JPEG stays flat
  assert sorted(names) == sorted([*expected, *(f'deeper/still/{i:03d}.JPG' for i in range(4))])
  again, lines = open_data(config)
  assert lines[0].endswith(f'10 images from the cache {next((tmp_path / "cache").glob("*.npy"))}')
  np.testing.assert_array_equal(every(again.train), every(data.train))


def test_other_sizes_are_centre_cropped_and_resized_or_refused(tmp_path):
  # 24 wide, 8 high: red, green and blue thirds. The centre 8x8 square is the green third.
  image = np.zeros((8, 24, 3), np.uint8)
  image[:, :8, 0] = image[:, 8:16, 1] = image[:, 16:, 2] = 255
  write_images(tmp_path / 'wide', [image] * 5)
  config = make_config(f'folder:{tmp_path / "wide"}', tmp_path, shape=(4, 4, 3),
                       test_fraction=0.2)
  data, _ = open_data(config)
  green = np.zeros((4, 4, 3), np.uint8)
  green[..., 1] = 255
  for out in every(data.train):
    np.testing.assert_array_equal(out, green)
  config.data.resize = False
  config.data.cache_dir = str(tmp_path / 'other_cache')
  with pytest.raises(ValueError, match=r'000.png is 24x8, not the model\'s 4x4, and data.resize'):
    open_data(config)
  # Enlarging: a flat image stays flat.
  write_images(tmp_path / 'small', [np.full((2, 2, 3), 90, np.uint8)] * 5)
  data, _ = open_data(make_config(f'folder:{tmp_path / "small"}', tmp_path, test_fraction=0.2))
  np.testing.assert_array_equal(every(data.train), np.full((4, 8, 8, 3), 90, np.uint8))


def test_grayscale_folder_for_a_one_channel_model(tmp_path):
  gray = random_images(5, (8, 8, 1), seed=2)
  write_images(tmp_path / 'gray', gray)
  data, _ = open_data(make_config(f'folder:{tmp_path / "gray"}', tmp_path, shape=(8, 8, 1),
                                  test_fraction=0.2))
  assert every(data.train).shape == (4, 8, 8, 1)
  names = data.record['train'] + data.record['test']
  np.testing.assert_array_equal(np.concatenate([every(data.train), every(data.test)]),
                                gray[[int(n[:3]) for n in names]])
  with pytest.raises(ValueError, match=r'images with 1 channel\(s\), the model 3; set '
                                       r'--config.model.image_shape="\(8, 8, 1\)"'):
    open_data(make_config(f'folder:{tmp_path / "gray"}', tmp_path, test_fraction=0.2))


def test_split_is_deterministic_given_by_subfolders_and_pinned_by_the_record(tmp_path):
  write_images(tmp_path / 'many', random_images(40))
  config = make_config(f'folder:{tmp_path / "many"}', tmp_path, test_fraction=0.25)
  first, _ = open_data(config)
  assert len(first.record['test']) == 10
  assert open_data(config)[0].record == first.record
  config.data.split_seed = 1
  assert open_data(config)[0].record['test'] != first.record['test']
  # Recorded in a workdir, the split outlives new files and another seed.
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  own_images.write_record(workdir, first.record)
  write_images(tmp_path / 'many' / 'later', random_images(3, seed=9))
  resumed, _ = open_data(config, workdir)
  assert resumed.record == first.record
  np.testing.assert_array_equal(every(resumed.test), every(first.test))
  # train/ and test/ subfolders are the split.
  write_images(tmp_path / 'given' / 'train', random_images(6, seed=3))
  write_images(tmp_path / 'given' / 'test', random_images(2, seed=4))
  given, _ = open_data(make_config(f'folder:{tmp_path / "given"}', tmp_path))
  assert given.record['test'] == ['test/000.png', 'test/001.png'] and len(given.train) == 6


def test_no_test_split_evaluates_training_images(tmp_path):
  write_images(tmp_path / 'all', random_images(5))
  data, _ = open_data(make_config(f'folder:{tmp_path / "all"}', tmp_path, test_fraction=0.0))
  assert data.eval_split == 'train' and data.test is data.train and len(data.train) == 5


def test_npy_is_read_in_place_and_split(tmp_path):
  images = random_images(20)
  np.save(tmp_path / 'x.npy', images)
  config = make_config(f'npy:{tmp_path / "x.npy"}', tmp_path, test_fraction=0.25)
  data, lines = open_data(config)
  assert 'read in place' in lines[0] and not (tmp_path / 'cache').exists()
  test = np.asarray(data.record['test'])
  np.testing.assert_array_equal(every(data.test), images[test])
  np.testing.assert_array_equal(every(data.train), np.delete(images, test, axis=0))
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  own_images.write_record(workdir, data.record)
  np.save(tmp_path / 'x.npy', random_images(21))
  with pytest.raises(ValueError, match='holds 21 images, but the workdir'):
    open_data(config, workdir)


def test_npz_gives_the_split_and_stored_bits_reduce(tmp_path):
  train, test = random_images(8, seed=5) // 8, random_images(3, seed=6) // 8  # 5-bit values
  np.savez(tmp_path / 'x.npz', train=train, test=test)
  config = make_config(f'npy:{tmp_path / "x.npz"}', tmp_path, stored_bits=5, bits=3)
  assert datasets.describe(config).num_levels == 8
  data, _ = open_data(config)
  np.testing.assert_array_equal(every(data.train), train // 4)
  np.testing.assert_array_equal(every(data.test), test // 4)


def test_npy_of_another_size_is_resized_into_the_cache(tmp_path):
  np.save(tmp_path / 'big.npy', np.full((5, 16, 16, 3), 31, np.uint8))
  config = make_config(f'npy:{tmp_path / "big.npy"}', tmp_path, stored_bits=5,
                       test_fraction=0.2)
  data, lines = open_data(config)
  assert 'decoded 4 images' in lines[0]
  np.testing.assert_array_equal(every(data.train), np.full((4, 8, 8, 3), 31, np.uint8))


def test_a_uniform_model_scores_exactly_the_bits_of_the_data(tmp_path):
  """Through the evaluator on 5-bit data: the density 1/32^D on [0, 32)^D is 5 bits/dim, so
  the bits/dim count D = H * W * C dimensions of 32 levels each."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flowpp_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
  from flowpp_jax.trainer import evaluate  # pylint: disable=g-import-not-at-top

  np.save(tmp_path / 'x.npy', random_images(13, (4, 6, 3)) // 8)
  config = make_config(f'npy:{tmp_path / "x.npy"}', tmp_path, shape=(4, 6, 3),
                       stored_bits=5, test_fraction=0.5)
  config.eval.batch_size = 4
  data, _ = open_data(config)
  assert every(data.test).max() < 32

  class Uniform:
    num_dims = 4 * 6 * 3

    def apply(self, variables, images, rng):
      del variables, rng
      log_px = jnp.full(images.shape[:1], -self.num_dims * np.log(32.0))
      return {'log_px': log_px, 'log_qu': jnp.zeros_like(log_px)}

  exp = types.SimpleNamespace(model=Uniform(), config=config, data=data,
                              source=lambda split: data.test)
  result = evaluate.make_evaluator(exp, 2)(parallel.replicate({'unused': jnp.zeros(())}), 0)
  assert result['num_examples'] == len(data.test) == 6
  assert result['bpd'] == pytest.approx(5.0, abs=1e-6)
  assert result['bpd_iw'] == pytest.approx(5.0, abs=1e-6)


@pytest.mark.parametrize('case', ['empty', 'corrupt', 'mixed', 'dtype', 'rank', 'range',
                                  'few', 'empty_test', 'npz_keys'])
def test_bad_input_is_one_line(tmp_path, case):
  folder = tmp_path / 'images'
  folder.mkdir()
  dataset, data, batch = f'folder:{folder}', {'test_fraction': 0.2}, 4
  if case == 'empty':
    (folder / 'notes.txt').write_text('no images here')
    match = f'no PNG or JPEG images under {folder}'
  elif case == 'corrupt':
    write_images(folder, random_images(5))
    (folder / '002.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    match = f'cannot read image {folder / "002.png"}'
  elif case == 'mixed':
    write_images(folder, random_images(3))
    write_images(folder / 'g', random_images(3, (8, 8, 1)))
    match = 'mixes channel counts'
  elif case in ('dtype', 'rank', 'range'):
    array = {'dtype': np.zeros((5, 8, 8, 3), np.float32), 'rank': np.zeros((5, 8, 8), np.uint8),
             'range': np.full((5, 8, 8, 3), 40, np.uint8)}[case]
    np.save(tmp_path / 'x.npy', array)
    dataset, data = f'npy:{tmp_path / "x.npy"}', {'test_fraction': 0.2, 'stored_bits': 5}
    match = {'dtype': 'x.npy is float32; the npy source needs uint8',
             'rank': r'x.npy has shape \[5, 8, 8\]; the npy source needs \[N, H, W, C\]',
             'range': 'x.npy holds values up to 40, above 31'}[case]
  elif case == 'few':
    write_images(folder, random_images(4))
    batch, match = 8, 'has 3 training images, fewer than one batch'
  elif case == 'empty_test':
    write_images(folder, random_images(4))
    data, match = {'test_fraction': 0.1}, 'the test split would be empty: 4 images'
  else:
    np.savez(tmp_path / 'x.npz', images=random_images(4))
    dataset, match = f'npy:{tmp_path / "x.npz"}', 'must hold arrays named train and test'
  config = make_config(dataset, tmp_path, batch_size=batch, **data)
  with pytest.raises(ValueError, match=match) as e:
    open_data(config)
  assert '\n' not in str(e.value)
  cache = tmp_path / 'cache'
  assert not cache.exists() or not any(cache.iterdir())  # nothing was written
