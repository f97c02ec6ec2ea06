"""Command line: python -m flowpp_jax.prepare --dataset=NAME [--data_dir=DIR] [--manual_dir=DIR].

Downloads a tfds data set and writes it as array_record, which the trainer reads without
TensorFlow. Writing needs TensorFlow: pip install -e '.[prepare]'.
"""
import importlib.util

from absl import flags
from etils import epath

from flowpp_jax.data import datasets
from flowpp_jax.runtime import cli

_DATASET = flags.DEFINE_enum('dataset', None, list(datasets.DATASETS), 'Data set to prepare.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'tfds data folder (default: tfds\'s own).')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Folder of archives tfds cannot download (ImageNet\'s tars); '
    'default DATA_DIR/downloads/manual.')

# Packages that tfds needs to write a data set but not to read one.
_WRITE_MODULES = ('tensorflow', 'importlib_resources')


def main(argv):
  cli.refuse_arguments(argv)
  info = datasets.get_info(_DATASET.value)
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


def run() -> None:
  cli.run(main, required='dataset')
