"""Your own images: ``--config.dataset=folder:/path`` (PNG and JPEG files, searched
recursively) or ``--config.dataset=npy:/path/file.npy`` (uint8 [N, H, W, C]; an ``.npz`` holds
``train`` and ``test`` arrays).

Images are decoded once into a memory-mapped ``.npy`` in the cache folder (``data.cache_dir``,
default ~/.cache/flowpp_jax), keyed by the files' names, sizes and times and the target shape;
the trainer then reads only the rows of its batches. Images of another size than
``model.image_shape`` are centre-cropped to its aspect ratio and resized (Pillow's box filter
when shrinking, bicubic when enlarging), or refused with ``data.resize=False``. Grayscale files
have 1 channel and colour files 3 (alpha dropped); the files must agree with each other and
with the model.

The split: a folder with ``train/`` and ``test/`` subfolders, and an ``.npz``, give it; otherwise
a fraction ``data.test_fraction`` of the images, chosen by ``data.split_seed``, is held out
(0: none, and eval scores training images). Training records the split in
WORKDIR/data_split.json; a resumed, evaluated or sampled run reads it back and uses exactly
those images.
"""
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import time

import numpy as np
from PIL import Image

from flowpp_jax.runtime import fileio

KINDS = ('folder', 'npy')
SPLIT_FILE = 'data_split.json'
SUFFIXES = ('.png', '.jpg', '.jpeg')
_GRAY_MODES = ('1', 'L', 'LA', 'La')
_COLOR_MODES = ('RGB', 'RGBA', 'RGBa', 'RGBX', 'P', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV')
_CACHE_VERSION = 1  # bump when the decoding (crop, filter, modes) changes
_DECODE_CHUNK = 256


@dataclasses.dataclass
class Splits:
  """What a source opens to: random-access train and test arrays (test None: no test split),
  the record that pins them, and a line about how they were read."""
  train: np.ndarray
  test: np.ndarray | None
  record: dict
  report: str


def parse(dataset: str):
  """'folder:/x' -> ('folder', '/x'); a registry name -> None."""
  kind, sep, path = dataset.partition(':')
  if not sep or kind not in KINDS:
    return None
  if not path:
    raise ValueError(f'dataset {dataset!r} names no path: use {kind}:/path/to/'
                     f'{"images" if kind == "folder" else "file.npy"}')
  return kind, path


def default_cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get('XDG_CACHE_HOME', pathlib.Path.home() / '.cache')) / \
      'flowpp_jax'


def open_splits(dataset: str, data_cfg, image_shape, workdir=None, say=print,
                min_train: int = 1) -> Splits:
  """Opens ``folder:...`` or ``npy:...`` for a model of ``image_shape`` [H, W, C], refusing
  fewer than ``min_train`` (one batch) training images.

  The split recorded in ``workdir`` wins over the one the config would choose. Raises
  ValueError (one line) on bad input, having written nothing but a complete cache file.
  """
  kind, path = parse(dataset)
  recorded = _read_record(workdir, dataset)
  max_value = 2 ** data_cfg.stored_bits - 1
  if kind == 'folder':
    return _open_folder(pathlib.Path(path), dataset, data_cfg, tuple(image_shape), recorded,
                        max_value, say, min_train)
  return _open_arrays(pathlib.Path(path), dataset, data_cfg, tuple(image_shape), recorded,
                      max_value, say, min_train)


def _check_train_count(dataset: str, count: int, min_train: int) -> None:
  if count < min_train:
    raise ValueError(f'{dataset} has {count} training images, fewer than one batch '
                     f'(batch_size {min_train}); add images or lower --config.batch_size')


def write_record(workdir, record: dict) -> None:
  """WORKDIR/data_split.json: the images of each split, for resumed and evaluated runs."""
  fileio.write_text(fileio.path(workdir) / SPLIT_FILE, json.dumps(record) + '\n')


def _read_record(workdir, dataset: str):
  if workdir is None:
    return None
  path = fileio.path(workdir) / SPLIT_FILE
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except ValueError:
    raise ValueError(f'{path} is corrupt; restore it from a backup, or delete it to split '
                     'the data afresh (then the test images may differ)') from None
  if record.get('dataset') != dataset:
    raise ValueError(f'{workdir} was trained on dataset {record.get("dataset")!r}, not '
                     f'{dataset!r}; pass that dataset or another --workdir')
  return record


# ---------------------------------------------------------------------------------------------
# Splits.


def _held_out(count: int, data_cfg, what: str) -> np.ndarray:
  """Sorted indices of the test images among ``count``, by data.test_fraction and seed."""
  fraction = data_cfg.test_fraction
  if fraction == 0:
    return np.zeros(0, np.int64)
  num_test = int(round(count * fraction))
  if num_test == 0:
    raise ValueError(f'the test split would be empty: {count} {what} x data.test_fraction '
                     f'{fraction} rounds to 0; raise data.test_fraction, add images, or set '
                     'it to 0 to evaluate on training images')
  if num_test == count:
    raise ValueError(f'data.test_fraction {fraction} leaves no training images of {count}')
  order = np.random.default_rng(data_cfg.split_seed).permutation(count)
  return np.sort(order[:num_test])


def _split_by_index(count: int, test: np.ndarray):
  """(train indices, test indices) of ``count`` items, test given."""
  is_test = np.zeros(count, bool)
  is_test[test] = True
  return np.flatnonzero(~is_test), np.flatnonzero(is_test)


# ---------------------------------------------------------------------------------------------
# A folder of image files.


def _list_images(root: pathlib.Path) -> list:
  """Relative POSIX paths of the PNG and JPEG files under ``root``, sorted; hidden folders
  skipped."""
  names = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith('.'))
    for name in files:
      if name.lower().endswith(SUFFIXES) and not name.startswith('.'):
        names.append((pathlib.Path(directory) / name).relative_to(root).as_posix())
  return sorted(names)


def _open_folder(root, dataset, data_cfg, shape, recorded, max_value, say,
                 min_train) -> Splits:
  if not root.is_dir():
    raise ValueError(f'{root} is not a folder (dataset {dataset})')
  if recorded is not None:
    train_names, test_names = recorded['train'], recorded['test']
    missing = [n for n in train_names + test_names if not (root / n).is_file()]
    if missing:
      raise ValueError(f'{root / missing[0]} is gone ({len(missing)} of the recorded images '
                       f'are); the workdir\'s {SPLIT_FILE} lists the images it trained on')
  else:
    names = _list_images(root)
    if not names:
      raise ValueError(f'no PNG or JPEG images under {root}')
    train_names = [n for n in names if n.startswith('train/')]
    test_names = [n for n in names if n.startswith('test/')]
    if not (train_names and test_names):  # no given split: hold out a fraction
      test = _held_out(len(names), data_cfg, 'images')
      train_idx, test_idx = _split_by_index(len(names), test)
      train_names = [names[i] for i in train_idx]
      test_names = [names[i] for i in test_idx]
  _check_train_count(dataset, len(train_names), min_train)
  ordered = train_names + test_names
  paths = [root / n for n in ordered]
  stats = [p.stat() for p in paths]
  key = _cache_key('folder', root.resolve(), shape, data_cfg.resize,
                   [(n, s.st_size, s.st_mtime_ns) for n, s in zip(ordered, stats)])
  array, report = _cached(key, data_cfg, len(ordered), shape, say,
                          lambda: _check_channels(paths, dataset, shape),
                          lambda i: _decode(paths[i], shape, data_cfg.resize, max_value))
  record = {'dataset': dataset, 'train': train_names, 'test': test_names}
  return Splits(array[:len(train_names)], array[len(train_names):] if test_names else None,
                record, report)


def _mode_channels(path: pathlib.Path, mode: str) -> int:
  if mode in _GRAY_MODES:
    return 1
  if mode in _COLOR_MODES:
    return 3
  raise ValueError(f'{path}: images in Pillow mode {mode} (16-bit or float) are not '
                   'supported; convert it to 8-bit')


def _check_channels(paths, dataset, shape) -> None:
  """Reads every file's header: each must open, and all must have the model's channels."""
  first = {}
  for path in paths:
    try:
      with Image.open(path) as image:
        mode = image.mode
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
      raise ValueError(f'cannot read image {path}: {e}') from None
    first.setdefault(_mode_channels(path, mode), path)
  if len(first) > 1:
    raise ValueError(f'{dataset} mixes channel counts: {first[1]} is grayscale, {first[3]} '
                     'colour; convert them all to one')
  (found, _), = first.items()
  if found != shape[2]:
    raise ValueError(f'{dataset} has images with {found} channel(s), the model {shape[2]}; '
                     f'set --config.model.image_shape="({shape[0]}, {shape[1]}, {found})"')


def _decode(path: pathlib.Path, shape, resize: bool, max_value: int) -> np.ndarray:
  """One image file -> uint8 [H, W, C] of the model's shape (channels already checked)."""
  height, width, channels = shape
  try:
    with Image.open(path) as image:
      image.load()
      image = image.convert('L' if channels == 1 else 'RGB')
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'cannot read image {path}: {e}') from None
  if image.size != (width, height):
    if not resize:
      raise ValueError(f'{path} is {image.size[0]}x{image.size[1]}, not the model\'s '
                       f'{width}x{height}, and data.resize is False')
    image = fit(image, height, width)
  array = np.asarray(image, np.uint8).reshape(height, width, channels)
  if array.max() > max_value:
    raise ValueError(f'{path} holds values up to {array.max()}, above {max_value} '
                     f'(data.stored_bits = {max_value.bit_length()})')
  return array


def fit(image: Image.Image, height: int, width: int) -> Image.Image:
  """Centre-crops ``image`` to the aspect ratio of height x width and resizes it to that size:
  Pillow's box filter (an area average) when shrinking, bicubic when enlarging."""
  w, h = image.size
  scale = min(w / width, h / height)
  crop_w, crop_h = width * scale, height * scale
  left, top = (w - crop_w) / 2, (h - crop_h) / 2
  shrinking = scale >= 1
  return image.resize((width, height),
                      Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC,
                      box=(left, top, left + crop_w, top + crop_h))


# ---------------------------------------------------------------------------------------------
# NumPy files.


def _open_arrays(path, dataset, data_cfg, shape, recorded, max_value, say,
                 min_train) -> Splits:
  arrays = _load_arrays(path)
  for name, array in arrays.items():
    _check_array(path, name, array, max_value)
  parts, record = _array_parts(path, dataset, arrays, data_cfg, recorded)
  _check_train_count(dataset, len(parts['train'][1]), min_train)
  out, reports = {}, []
  for split, part in parts.items():
    out[split] = None if part is None else _fit_rows(path, split, *part, shape, data_cfg,
                                                     max_value, say, reports)
  return Splits(out['train'], out['test'], record,
                '; '.join(reports) or f'{path}: read in place (memory-mapped)')


def _load_arrays(path):
  """{'all': uint8 array} of an .npy (memory-mapped), {'train': ..., 'test': ...} of an .npz."""
  if not path.is_file():
    raise ValueError(f'{path} not found; pass --config.dataset=npy:/path/to/{path.name}')
  if path.suffix == '.npz':
    return _load_npz(path)
  if path.suffix != '.npy':
    raise ValueError(f'{path}: the npy source reads .npy or .npz files')
  try:
    return {'all': np.load(path, mmap_mode='r')}
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {path}: {str(e).splitlines()[0]}') from None


def _array_parts(path, dataset, arrays, data_cfg, recorded):
  """({'train': (array, rows), 'test': (array, rows) or None}, the record): an .npz's own
  split, or the recorded (else a fresh) held-out fraction of an .npy's rows."""
  if 'all' not in arrays:
    if not len(arrays['test']):
      raise ValueError(f'{path}: the test array is empty')
    record = {'dataset': dataset, 'num_images': {k: len(v) for k, v in arrays.items()}}
    return {k: (v, np.arange(len(v))) for k, v in arrays.items()}, record
  array = arrays['all']
  if recorded is None:
    test = _held_out(len(array), data_cfg, 'images')
  elif recorded['num_images'] != len(array):
    raise ValueError(f'{path} holds {len(array)} images, but the workdir\'s {SPLIT_FILE} split '
                     f'{recorded["num_images"]}; it trained on another file')
  else:
    test = np.asarray(recorded['test'], np.int64)
  train_rows, test_rows = _split_by_index(len(array), test)
  record = {'dataset': dataset, 'num_images': len(array), 'test': test.tolist()}
  return {'train': (array, train_rows),
          'test': (array, test_rows) if len(test_rows) else None}, record


def _fit_rows(path, split, array, rows, shape, data_cfg, max_value, say, reports):
  """The rows ``rows`` of ``array`` at the model's shape: in place when they have it, else
  resized into the cache (its line appended to ``reports``)."""
  if array.shape[1:] == shape:
    return _rows(array, rows)
  if array.shape[3] != shape[2]:
    raise ValueError(f'{path}: images have {array.shape[3]} channels, the model {shape[2]}; '
                     'set --config.model.image_shape')
  if not data_cfg.resize:
    raise ValueError(f'{path}: images are {array.shape[2]}x{array.shape[1]}, not the '
                     f'model\'s {shape[1]}x{shape[0]}, and data.resize is False')
  stat = path.stat()
  key = _cache_key('npy', path.resolve(), shape, split, stat.st_size, stat.st_mtime_ns,
                   hashlib.sha256(rows.tobytes()).hexdigest())
  resized, report = _cached(key, data_cfg, len(rows), shape, say, lambda: None,
                            lambda i: _resize_row(array[rows[i]], shape, max_value))
  reports.append(report)
  return resized


def _rows(array, rows: np.ndarray):
  """``array[rows]`` without a copy: a slice when the rows are contiguous, else read lazily."""
  if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
    return array[rows[0]:rows[-1] + 1]
  return _Rows(array, rows)


class _Rows:
  """The rows ``rows`` of an array, read only when indexed: ``src[i]`` -> array[rows[i]]."""

  def __init__(self, array, rows):
    self._array, self._rows = array, rows
    self.shape = (len(rows), *array.shape[1:])

  def __len__(self):
    return len(self._rows)

  def __getitem__(self, indices):
    # Sorted reads go through the memory map in file order; then back to the asked order.
    wanted = self._rows[indices]
    order = np.argsort(wanted, kind='stable')
    out = np.empty((len(wanted), *self.shape[1:]), np.uint8)
    out[order] = self._array[wanted[order]]
    return out


def _load_npz(path):
  try:
    with np.load(path) as archive:
      missing = {'train', 'test'} - set(archive.files)
      if missing:
        raise ValueError(f'{path} must hold arrays named train and test; it has '
                         f'{", ".join(archive.files) or "none"}')
      return {name: archive[name] for name in ('train', 'test')}
  except (OSError, EOFError, KeyError) as e:
    raise ValueError(f'cannot read {path}: {e}') from None
  except ValueError as e:
    if str(e).startswith(str(path)):
      raise
    raise ValueError(f'cannot read {path}: {e}') from None


def _check_array(path, name, array, max_value) -> None:
  what = path.name if name == 'all' else f'{path.name}[{name!r}]'
  if array.dtype != np.uint8:
    raise ValueError(f'{what} is {array.dtype}; the npy source needs uint8 images')
  if array.ndim != 4 or array.shape[3] not in (1, 3):
    raise ValueError(f'{what} has shape {list(array.shape)}; the npy source needs '
                     '[N, H, W, C] with C = 1 or 3')
  chunk = max(1, (64 << 20) // max(1, array[0].size)) if len(array) else 1
  top = max((int(array[i:i + chunk].max()) for i in range(0, len(array), chunk)), default=0)
  if top > max_value:
    raise ValueError(f'{what} holds values up to {top}, above {max_value} '
                     f'(data.stored_bits = {max_value.bit_length()}); set data.stored_bits')


def _resize_row(row, shape, max_value) -> np.ndarray:
  image = Image.fromarray(row[..., 0] if row.shape[2] == 1 else row)
  out = np.asarray(fit(image, shape[0], shape[1]), np.uint8).reshape(shape)
  return np.minimum(out, max_value)  # bicubic may overshoot the top level of n-bit data


# ---------------------------------------------------------------------------------------------
# The decoded-array cache.


def _cache_key(*parts) -> str:
  text = json.dumps([_CACHE_VERSION, *parts], default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached(key, data_cfg, count, shape, say, check, decode):
  """A read-only memory map of uint8 [count, *shape]: the cache file of ``key``; when absent,
  ``check()`` then ``decode(i)`` for i < count build it. Returns (array, a line on how it was
  read)."""
  directory = pathlib.Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
  path = directory / f'{key}.npy'
  if path.exists():
    try:
      array = np.load(path, mmap_mode='r')
      if array.shape == (count, *shape) and array.dtype == np.uint8:
        return array, f'{count} images from the cache {path}'
    except (OSError, ValueError):
      pass  # an unreadable cache is rebuilt
  start = time.perf_counter()
  check()
  directory.mkdir(parents=True, exist_ok=True)
  with fileio.replaced(path) as tmp:  # a reader sees no cache or a whole one
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(count, *shape))
    # Pillow decodes without the GIL: a thread per core; chunks so that an error stops soon.
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      for first in range(0, count, _DECODE_CHUNK):
        stop = min(first + _DECODE_CHUNK, count)
        out[first:stop] = list(pool.map(decode, range(first, stop)))
        if stop // 10_000 > first // 10_000:
          say(f'decoding: {stop}/{count} images')
    out.flush()
    del out
  seconds = time.perf_counter() - start
  return np.load(path, mmap_mode='r'), (
      f'decoded {count} images in {seconds:.1f} s ({count / seconds:.0f} images/s) into the '
      f'cache {path}')
