"""Where images come from: a registry of data sets, your own images (data/own_images.py),
and random-access readers of their splits, with fewer bits where the config asks.

ImageNet 32/64 is tfds `downsampled_imagenet`: van den Oord et al.'s (2016) files, the data
the Flow++ paper reports on. `imagenet_resized` is Chrabaszcz et al.'s box-resized version,
whose likelihoods are not comparable. image-net.org no longer serves the original tars, so
they must be put in the manual folder by hand; tfds checks them against its checksums.
"""
import dataclasses
import functools
import shlex

import numpy as np

from flowpp_jax.data import own_images


class DatasetNotPreparedError(ValueError):
  """The data set's files are not in the data folder; the message says how to prepare them."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """One data set: its images are uint8 [H, W, C] with values in 0 .. num_levels - 1."""
  name: str
  image_shape: tuple[int, int, int]
  num_levels: int
  train_split: str
  test_split: str
  tfds_name: str | None = None  # None: built into scikit-learn, nothing to prepare.
  manual_files: tuple[str, ...] = ()  # Archives tfds can no longer download itself.


DATASETS: dict[str, DatasetInfo] = {
    'digits': DatasetInfo('digits', (8, 8, 1), 17, 'train', 'test'),
    'cifar10': DatasetInfo('cifar10', (32, 32, 3), 256, 'train', 'test', tfds_name='cifar10'),
    'imagenet32': DatasetInfo('imagenet32', (32, 32, 3), 256, 'train', 'validation',
                              tfds_name='downsampled_imagenet/32x32',
                              manual_files=('train_32x32.tar', 'valid_32x32.tar')),
    'imagenet64': DatasetInfo('imagenet64', (64, 64, 3), 256, 'train', 'validation',
                              tfds_name='downsampled_imagenet/64x64',
                              manual_files=('train_64x64.tar', 'valid_64x64.tar')),
}

# The digits split must never change (results on it are compared across runs and versions).
_DIGITS_SEED = 20190211
_DIGITS_TEST_SIZE = 360


def get_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f'unknown dataset {name!r}; known: {", ".join(DATASETS)}, or your own '
                     'images as folder:/path or npy:/path/file.npy')
  return DATASETS[name]


def prepare_command(info: DatasetInfo, data_dir=None) -> str:
  """The command that prepares ``info`` in ``data_dir`` (None: tfds's default folder)."""
  command = f'python -m flowpp_jax.prepare --dataset={info.name}'
  if data_dir is None:
    return command
  return f'{command} --data_dir={shlex.quote(str(data_dir))}'


def describe(config) -> DatasetInfo:
  """The data set ``config`` names, as its model sees it: data.bits applied, and for
  folder:/npy: sources the shape of config.model. Reads nothing; raises ValueError naming the
  field."""
  data = config.data
  if not 1 <= data.stored_bits <= 8:
    raise ValueError(f'data.stored_bits must be in [1, 8], got {data.stored_bits}')
  if not 0 <= data.test_fraction < 1:
    raise ValueError(f'data.test_fraction must be in [0, 1), got {data.test_fraction}')
  own = own_images.parse(config.dataset)
  if own is not None:
    bits = data.bits or data.stored_bits
    if not bits <= data.stored_bits:
      raise ValueError(f'data.bits ({data.bits}) must be at most data.stored_bits '
                       f'({data.stored_bits})')
    return DatasetInfo(config.dataset, tuple(config.model.image_shape), 2 ** bits, 'train',
                       'test')
  info = get_info(config.dataset)
  if not data.bits:
    return info
  if info.num_levels != 256:
    raise ValueError(f'data.bits reduces 8-bit images; {info.name} has {info.num_levels} '
                     'levels: set data.bits to 0')
  if not 1 <= data.bits <= 8:
    raise ValueError(f'data.bits must be in [1, 8] (0: as stored), got {data.bits}')
  return dataclasses.replace(info, num_levels=2 ** data.bits)


@dataclasses.dataclass
class Data:
  """The opened data of a run: its info, random-access train and eval splits, and what the
  trainer records in the workdir (None for the registry's fixed splits)."""
  info: DatasetInfo
  train: object
  test: object
  eval_split: str  # 'test', or 'train' where the data has no test split
  record: dict | None = None


def open_data(config, workdir=None, say=print) -> Data:
  """Opens the splits of ``config.dataset``, reduced to data.bits. ``workdir``: where a
  folder:/npy: source's recorded split is read from. Raises ValueError (one line) on bad or
  missing data."""
  info = describe(config)
  own = own_images.parse(config.dataset)
  if own is None:
    shift = 8 - config.data.bits if config.data.bits else 0
    data_dir = config.data_dir or None
    train, test = (reduce_bits(load_split(config.dataset, split, data_dir), shift)
                   for split in ('train', 'test'))
    return Data(info, train, test, 'test')
  splits = own_images.open_splits(config.dataset, config.data, info.image_shape, workdir, say,
                                  min_train=config.batch_size)
  say(f'{config.dataset}: {len(splits.train)} train, '
      f'{len(splits.test) if splits.test is not None else "no"} test images; {splits.report}')
  shift = config.data.stored_bits - (info.num_levels.bit_length() - 1)
  train = reduce_bits(ArraySource(splits.train), shift)
  if splits.test is None:
    return Data(info, train, train, 'train', splits.record)
  return Data(info, train, reduce_bits(ArraySource(splits.test), shift), 'test', splits.record)


def reduce_bits(source, shift: int):
  """``source`` with each value x read as floor(x / 2^shift) (the official 5-bit ImageNet's
  reduction, shift = 3)."""
  return source if shift == 0 else _Reduced(source, shift)


class _Reduced:
  def __init__(self, source, shift: int):
    self._source, self._shift = source, shift

  def __len__(self):
    return len(self._source)

  def __getitem__(self, indices):
    return np.right_shift(self._source[indices], self._shift)


class ArraySource:
  """A split held in memory: ``src[indices]`` -> uint8 [len(indices), H, W, C]."""

  def __init__(self, images: np.ndarray):
    self._images = images

  def __len__(self):
    return len(self._images)

  def __getitem__(self, indices):
    return np.asarray(self._images[_check_indices(indices, len(self))])


class TfdsSource:
  """A tfds array_record split: ``src[indices]`` -> uint8 [len(indices), H, W, C]."""

  def __init__(self, source, info: DatasetInfo):
    self._source = source
    self._info = info

  def __len__(self):
    return len(self._source)

  def __getitem__(self, indices):
    keys = _check_indices(indices, len(self)).tolist()
    if hasattr(self._source, '__getitems__'):
      examples = self._source.__getitems__(keys) if keys else []
    else:
      examples = [self._source[k] for k in keys]
    if not examples:
      return np.zeros((0, *self._info.image_shape), np.uint8)
    images = np.stack([np.asarray(ex['image']) for ex in examples])
    if images.dtype != np.uint8 or images.shape[1:] != self._info.image_shape:
      raise ValueError(f'{self._info.name}: expected uint8 images of shape '
                       f'{self._info.image_shape}, read {images.dtype} {images.shape[1:]}')
    return images


def _check_indices(indices, size) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
    raise ValueError(f'indices must be a 1-D integer array, got {indices.dtype} {indices.shape}')
  if indices.size and (indices.min() < 0 or indices.max() >= size):
    raise IndexError(f'indices must lie in [0, {size}), got [{indices.min()}, {indices.max()}]')
  return indices.astype(np.int64)


def load_split(name: str, split: str, data_dir=None):
  """A random-access reader of one split.

  Args:
    name: a key of DATASETS.
    split: 'train' or 'test' ('test' is ImageNet's validation split), or the split's own name.
    data_dir: tfds data folder; None for tfds's default (ignored by 'digits').

  Returns:
    ``src`` with ``len(src)`` and ``src[indices]``: int [n] -> uint8 [n, H, W, C].

  Raises:
    DatasetNotPreparedError: the split's files are not in ``data_dir``.
    ValueError: an unknown name or split, or images that do not match the registry.
  """
  info = get_info(name)
  splits = {'train': info.train_split, 'test': info.test_split,
            info.train_split: info.train_split, info.test_split: info.test_split}
  if split not in splits:
    raise ValueError(f'unknown split {split!r} of {name}; known: {", ".join(splits)}')
  if info.tfds_name is None:
    return ArraySource(_digits_splits()[splits[split]])
  source = TfdsSource(_tfds_source(info, splits[split], data_dir), info)
  if len(source):
    source[np.zeros(1, np.int64)]  # Fail now, not at the first step, if the images are wrong.
  return source


@functools.cache
def _digits_splits():
  """{'train': uint8 [1437, 8, 8, 1], 'test': uint8 [360, 8, 8, 1]}, values 0..16."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  images = sk_datasets.load_digits().images.astype(np.uint8)[..., None]
  order = np.random.default_rng(_DIGITS_SEED).permutation(len(images))
  test, train = np.sort(order[:_DIGITS_TEST_SIZE]), np.sort(order[_DIGITS_TEST_SIZE:])
  splits = {'train': images[train], 'test': images[test]}
  for array in splits.values():
    array.flags.writeable = False
  return splits


def _tfds_source(info: DatasetInfo, split: str, data_dir):
  # Imported here: tfds takes a second to import and 'digits' needs none of it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    # tfds reports a missing data set as a file-format or file-not-found error; ask it plainly.
    builder = tfds.builder(info.tfds_name, data_dir=data_dir)
    if builder.is_prepared() and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
      raise
    raise DatasetNotPreparedError(_not_prepared_message(info, builder, data_dir)) from e


def _not_prepared_message(info: DatasetInfo, builder, data_dir) -> str:
  command = prepare_command(info, data_dir)
  if builder.is_prepared():
    return (f'{info.name} is prepared in {builder.data_dir} as {builder.info.file_format}, '
            f'not array_record: delete that folder (or use another --data_dir) and run: {command}')
  steps = f'run: {command}'
  if info.manual_files:
    manual_dir = builder.data_dir_root / 'downloads' / 'manual'
    steps = (f'put {" and ".join(info.manual_files)} (van den Oord et al. 2016; image-net.org '
             f'no longer serves them) in {manual_dir}, then run: {command}')
  return f'{info.name} is not prepared (looked in {builder.data_dir}): {steps}'
