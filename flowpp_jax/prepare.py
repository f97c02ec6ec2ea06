"""Command line: python -m flowpp_jax.prepare --dataset=NAME [--data_dir=DIR] [--manual_dir=DIR],
or python -m flowpp_jax.prepare --config=CONFIG [--config.FIELD=VALUE ...].

--dataset: downloads a tfds data set and writes it as array_record, which the trainer reads
without TensorFlow. Writing needs TensorFlow: pip install -e '.[prepare]'.

--config: prepares what the config reads. For your own images (folder:/npy:) that is decoding
them into the array cache, as the trainer would at its start, then reading random batches
back; both rates are printed.
"""
import importlib.util
import time

from absl import flags
from etils import epath
import numpy as np

from flowpp_jax.data import datasets, own_images
from flowpp_jax.runtime import cli

if __name__ == '__main__':  # a command's flags exist where it runs: absl's are process-wide
  _CONFIG = cli.define_config()  # --config=CONFIG prepares what the trainer would read
  flags.adopt_module_key_flags(cli)

  _DATASET = flags.DEFINE_enum('dataset', None, list(datasets.DATASETS), 'Data set to prepare.')
  _DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data folder (default: tfds\'s own).')
  _MANUAL_DIR = flags.DEFINE_string(
      'manual_dir', None, 'Folder of archives tfds cannot download (ImageNet\'s tars); '
      'default DATA_DIR/downloads/manual.')

# Packages that tfds needs to write a data set but not to read one.
_WRITE_MODULES = ('tensorflow', 'importlib_resources')


def main(argv):
  cli.refuse_arguments(argv)
  if (_DATASET.value is None) == (not flags.FLAGS['config'].present):
    cli.fail('pass --dataset=NAME (a tfds data set) or --config=CONFIG (what it reads)')
  if _DATASET.value is None:
    config = cli.load_config(_CONFIG)
    if own_images.parse(config.dataset) is not None:
      try:
        _prepare_own_images(config)
      except ValueError as e:
        cli.fail(str(e).splitlines()[0])
      return
    _prepare_tfds(config.dataset)
    return
  _prepare_tfds(_DATASET.value)


def _prepare_own_images(config, seconds: float = 3.0) -> None:
  """Builds (or finds) the cache, then reads random batches of config.batch_size from it for
  about ``seconds``."""
  data = datasets.open_data(config)
  rng = np.random.default_rng(0)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    count += len(data.train[rng.integers(0, len(data.train), config.batch_size)])
  rate = count / (time.perf_counter() - start)
  print(f'random batches of {config.batch_size} from the cache: {rate:.0f} images/s')


def _prepare_tfds(name: str) -> None:
  info = datasets.get_info(name)
  if info.tfds_name is None:
    print(f'{info.name} is built into scikit-learn: nothing to prepare.')
    return
  missing = [m for m in _WRITE_MODULES if importlib.util.find_spec(m) is None]
  if missing:
    cli.fail(f'preparing {info.name} needs {" and ".join(missing)}: '
             "pip install -e '.[prepare]' (training reads the result without them)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(info.tfds_name, data_dir=_DATA_DIR.value)
  if builder.is_prepared() and builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    cli.fail(f'{builder.data_dir} holds {info.name} as {builder.info.file_format}, not '
             'array_record: delete it or choose another --data_dir')
  manual_dir = _MANUAL_DIR.value or builder.data_dir_root / 'downloads' / 'manual'
  absent = [f for f in info.manual_files if not (epath.Path(manual_dir) / f).exists()]
  if absent and not builder.is_prepared():
    cli.fail(f'put {" and ".join(absent)} (van den Oord et al. 2016; image-net.org no longer '
             f'serves them) in {manual_dir}; tfds checks them against its checksums')
  builder.download_and_prepare(
      file_format=tfds.core.FileFormat.ARRAY_RECORD,
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  print(f'{info.name} is ready in {builder.data_dir}')


if __name__ == '__main__':
  cli.run(main, required=None, compiles=False)
