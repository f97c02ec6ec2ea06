"""The data layer: data sets, their fixed splits, and the deterministic sharded batches."""
import functools
import hashlib
import importlib.util
import subprocess
import sys
import threading
from unittest import mock

import numpy as np
import pytest

from flowpp_jax.data import datasets
from flowpp_jax.data import input_pipeline as ip


def counting_source(n):
  """n one-pixel images whose value is their index: a batch shows which examples it holds."""
  return datasets.ArraySource(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1))


def test_digits_splits_are_fixed():
  train, test = datasets.load_split('digits', 'train'), datasets.load_split('digits', 'test')
  assert (len(train), len(test)) == (1437, 360)
  x_train, x_test = train[np.arange(len(train))], test[np.arange(len(test))]
  info = datasets.DATASETS['digits']
  for x in (x_train, x_test):
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8, 1) == info.image_shape
    assert x.min() == 0 and x.max() == 16 == info.num_levels - 1
  # Regression guard: the held-out images must never change.
  assert int(x_test.sum(dtype=np.int64)) == 112541
  assert int(x_train.sum(dtype=np.int64)) == 449177
  assert hashlib.sha256(x_test.tobytes()).hexdigest()[:16] == '93e4201b445003ae'


def test_digits_splits_partition_the_data():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  every = load_digits().images.astype(np.uint8).reshape(1797, 64)
  both = np.concatenate([datasets.load_split('digits', s)[np.arange(n)].reshape(n, 64)
                         for s, n in (('train', 1437), ('test', 360))])
  # Same multiset of rows: every image sits in exactly one split.
  assert np.array_equal(np.unique(every, axis=0, return_counts=True)[1],
                        np.unique(both, axis=0, return_counts=True)[1])
  assert np.array_equal(np.unique(every, axis=0), np.unique(both, axis=0))


def test_unknown_names():
  with pytest.raises(ValueError, match='unknown dataset .*digits, cifar10, imagenet32'):
    datasets.load_split('mnist', 'train')
  with pytest.raises(ValueError, match='unknown split'):
    datasets.load_split('digits', 'validation')


@pytest.mark.parametrize('name', ['cifar10', 'imagenet64'])
def test_not_prepared_names_the_command(tmp_path, name):
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    datasets.load_split(name, 'test', data_dir=tmp_path)
  message = str(e.value)
  assert isinstance(e.value, ValueError) and '\n' not in message
  assert f'python -m flowpp_jax.prepare --dataset={name} --data_dir={tmp_path}' in message
  assert str(tmp_path) in message
  assert list(tmp_path.iterdir()) == []  # Nothing was downloaded or created.
  if name == 'imagenet64':
    assert 'train_64x64.tar and valid_64x64.tar' in message


class _BoundGetitems(mock.MagicMock):
  """tfds 4.9.10's mock_data sets the fake reader's __getitems__ as a plain attribute, so it
  is called without the reader as `self` and fails; bind it as the real method would be."""

  def __setattr__(self, name, value):
    if name == '__getitems__':
      value = functools.partial(value, self)
    super().__setattr__(name, value)


def test_tfds_split_through_mock_data(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  reader = tfds.testing.PickableDataSourceMock()
  reader.return_value = _BoundGetitems()
  with tfds.testing.mock_data(num_examples=5, mock_array_record_data_source=reader):
    src = datasets.load_split('cifar10', 'test', data_dir=tmp_path)
    x = src[np.array([4, 0, 4])]
    one = src[np.array([0])]
  assert len(src) == 5
  assert x.dtype == np.uint8 and x.shape == (3, 32, 32, 3)
  assert np.array_equal(x[0], x[2]) and np.array_equal(x[1], one[0])
  assert src[np.zeros(0, np.int64)].shape == (0, 32, 32, 3)


def test_tfds_source_without_getitems_and_bad_shapes():
  tfds = pytest.importorskip('tensorflow_datasets')
  images = np.arange(4 * 32 * 32 * 3, dtype=np.int64).reshape(4, 32, 32, 3).astype(np.uint8)
  fake = lambda builder, split, **kwargs: [{'image': im, 'label': 0} for im in images]
  with tfds.testing.mock_data(as_data_source_fn=fake):
    src = datasets.load_split('cifar10', 'train')
  assert np.array_equal(src[np.array([3, 1])], images[[3, 1]])
  wrong = lambda builder, split, **kwargs: [{'image': np.zeros((28, 28, 3), np.uint8)}]
  with tfds.testing.mock_data(as_data_source_fn=wrong):
    with pytest.raises(ValueError, match=r'cifar10: expected uint8 images of shape \(32, 32, 3\)'):
      datasets.load_split('cifar10', 'train')


def test_tfds_data_at_5_bits_is_floor_of_x_over_8():
  tfds = pytest.importorskip('tensorflow_datasets')
  from flowpp_jax import config_defaults  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  fake = lambda builder, split, **kwargs: [{'image': im, 'label': 0} for im in images]
  config = config_defaults.base_config()
  config.update(dataset='cifar10')
  config.data.bits = 5
  with tfds.testing.mock_data(as_data_source_fn=fake):
    data = datasets.open_data(config)
  assert data.info.num_levels == 32
  for split in (data.train, data.test):
    np.testing.assert_array_equal(split[np.arange(4)], np.floor(images / 8).astype(np.uint8))


def test_train_batches_deterministic_and_resumable():
  src = counting_source(10)
  batches = ip.TrainBatches(src, global_batch=4, seed=7)
  stream = batches.iterate(start_step=5)
  for step in range(5, 9):
    got_step, images, positions = next(stream)
    want_images, want_positions = ip.TrainBatches(src, 4, seed=7).host_batch(step)
    assert got_step == step
    assert np.array_equal(images, want_images) and np.array_equal(positions, want_positions)
    assert positions.dtype == np.int64 and np.array_equal(positions, np.arange(4) + 4 * step)
  stream.close()
  other = ip.TrainBatches(src, 4, seed=8).host_batch(5)[0]
  assert not np.array_equal(other, batches.host_batch(5)[0])


@pytest.mark.parametrize('process_count', [1, 2, 3, 4])
def test_host_shards_union_to_the_global_batch(process_count):
  src = counting_source(10)
  whole = ip.TrainBatches(src, 12, seed=3)
  hosts = [ip.TrainBatches(src, 12, seed=3, process_index=p, process_count=process_count)
           for p in range(process_count)]
  for step in (0, 1, 6):
    parts = [h.host_batch(step) for h in hosts]
    assert all(len(p[1]) == 12 // process_count for p in parts)
    images, positions = whole.host_batch(step)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), positions)
    assert np.array_equal(np.concatenate([p[0] for p in parts]), images)


def test_each_epoch_covers_every_example_once():
  n, batch = 10, 4
  batches = ip.TrainBatches(counting_source(n), batch, seed=0)
  stream = np.concatenate([batches.host_batch(s)[0].ravel() for s in range(10)])  # 4 epochs
  epochs = stream.reshape(-1, n)
  for order in epochs:
    assert sorted(order) == list(range(n))
  assert len({tuple(order) for order in epochs}) == len(epochs)  # A new order each epoch.
  assert np.array_equal(epochs[1], np.random.default_rng([0, 1]).permutation(n))


@pytest.mark.parametrize('process_count', [1, 3])
@pytest.mark.parametrize('num_examples', [0, 7])
def test_eval_batches_count_each_example_once(process_count, num_examples):
  n, batch = 10, 6
  src = counting_source(n)
  seen, lengths = [], []
  for p in range(process_count):
    host = list(ip.eval_batches(src, batch, num_examples, p, process_count))
    lengths.append(len(host))
    for images, mask, indices in host:
      assert images.shape == (batch // process_count, 1, 1, 1) and mask.dtype == np.float32
      real = mask == 1
      assert np.array_equal(images[real].ravel(), indices[real])
      assert not images[~real].any() and np.all(indices[~real] >= (num_examples or n))
      seen.extend(indices[real])
  assert len(set(lengths)) == 1  # Every host runs the same number of steps.
  assert sorted(seen) == list(range(num_examples or n))


def test_batch_must_split_evenly_over_hosts():
  with pytest.raises(ValueError, match='multiple of the process count 3'):
    ip.TrainBatches(counting_source(10), 10, seed=0, process_count=3)
  with pytest.raises(ValueError, match='multiple of the process count 4'):
    ip.eval_batches(counting_source(10), 6, 0, 0, 4)


def test_prefetch_thread_is_a_daemon_and_stops():
  stream = ip.TrainBatches(counting_source(10), 4, seed=0).iterate(0)
  next(stream)
  workers = [t for t in threading.enumerate() if t.name == 'flowpp-prefetch']
  assert workers and all(t.daemon for t in workers)
  stream.close()
  for t in workers:
    t.join(timeout=5)
    assert not t.is_alive()


def test_prefetch_reraises_reader_errors():
  class FailsOnThirdRead:
    reads = 0

    def __len__(self):
      return 10

    def __getitem__(self, indices):
      self.reads += 1
      if self.reads == 3:
        raise OSError('disk on fire')
      return counting_source(10)[indices]

  stream = ip.TrainBatches(FailsOnThirdRead(), 4, seed=0).iterate(0)
  assert [next(stream)[0] for _ in range(2)] == [0, 1]
  with pytest.raises(OSError, match='disk on fire'):
    next(stream)


def test_sample_init_batch():
  src = counting_source(10)
  x = ip.sample_init_batch(src, 6, seed=1)
  assert x.shape == (6, 1, 1, 1) and len(set(x.ravel())) == 6
  assert np.array_equal(x, ip.sample_init_batch(src, 6, seed=1))
  with pytest.raises(ValueError):
    ip.sample_init_batch(src, 11, seed=1)


@pytest.mark.skipif(importlib.util.find_spec('tensorflow') is not None,
                    reason='TensorFlow is installed')
def test_prepare_without_tensorflow_fails_in_one_line():
  result = subprocess.run([sys.executable, '-m', 'flowpp_jax.prepare', '--dataset=cifar10'],
                          capture_output=True, text=True, timeout=60, check=False)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1
  assert lines[0].startswith('error: ') and "pip install -e '.[prepare]'" in lines[0]
