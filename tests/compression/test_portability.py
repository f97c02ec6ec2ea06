"""Compressed files decode on machines other than the one that encoded them.

- A file encoded once (tests/fixtures/codec: a digits:tiny model's parameters, and 4 digits
  test images encoded with them on a 2-core AMD EPYC Zen 4, jax 0.10.2, XLA's default flags)
  decodes on whatever machine runs the suite, which over time are different CPUs.
- On this machine, files cross XLA:CPU's instruction sets (AVX-512 and AVX2 against AVX and
  SSE4.2, which round differently: no fused multiply-adds) and thread counts, each way.
- In CI, the Python 3.12 leg (jax 0.12) decodes a file that the first leg (jax 0.10.2) wrote
  (FLOWPP_CODEC_EXCHANGE names the folder they share; .ci/run sets it).

Regenerate the committed fixture (after a change of the digits:tiny config or of the format):
  python tests/compression/test_portability.py tests/fixtures/codec
"""
import json
import os
import pathlib
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flowpp_jax.compression.codec import ImageCodec
from flowpp_jax.data import datasets
from flowpp_jax.model import FlowPlusPlus, init_variables

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # conftest, as a script
from conftest import ROOT, initialised_workdir, load_config  # pylint: disable=wrong-import-position

FIXTURE = ROOT / 'tests' / 'fixtures' / 'codec'
EXCHANGE_ENV = 'FLOWPP_CODEC_EXCHANGE'
_IMAGES = 4


def _images():
  return np.asarray(datasets.load_split('digits', 'test')[np.arange(_IMAGES)])


def _config():
  return load_config('digits', 'tiny').model


def write_files(directory: pathlib.Path) -> None:
  """Initialises digits:tiny on 16 test images, then writes its parameters (params.npz), the
  first _IMAGES test images encoded with them (images.fppz) and where they were encoded."""
  directory.mkdir(parents=True, exist_ok=True)
  cfg = _config()
  x = np.asarray(datasets.load_split('digits', 'test')[np.arange(16)])
  params = init_variables(FlowPlusPlus(cfg), jnp.asarray(x), jax.random.PRNGKey(1))['params']
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  np.savez(directory / 'params.npz', **flat)
  (directory / 'images.fppz').write_bytes(ImageCodec(cfg, params).encode(_images()))
  (directory / 'encoded_by.json').write_text(json.dumps({'jax': jax.__version__}) + '\n')


def decode_files(directory: pathlib.Path) -> np.ndarray:
  with np.load(directory / 'params.npz') as f:
    params = traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep='/')
  return ImageCodec(_config(), params).decode((directory / 'images.fppz').read_bytes())


def test_the_committed_file_decodes_here():
  np.testing.assert_array_equal(decode_files(FIXTURE), _images())


@pytest.mark.skipif(not os.environ.get(EXCHANGE_ENV), reason=f'{EXCHANGE_ENV} is set by .ci/run')
def test_a_file_from_the_other_ci_leg_decodes():
  directory = pathlib.Path(os.environ[EXCHANGE_ENV])
  if not (directory / 'images.fppz').exists():
    write_files(directory)  # the first leg
  np.testing.assert_array_equal(decode_files(directory), _images())


def _compress(workdir, command, source, target, xla_flags):
  """python -m flowpp_jax.compress in a fresh process with these XLA flags (one XLA thread
  with --xla_cpu_multi_thread_eigen=false) and no compilation cache."""
  env = {**os.environ, 'XLA_FLAGS': xla_flags, 'JAX_ENABLE_COMPILATION_CACHE': 'false'}
  out = subprocess.run([sys.executable, '-m', 'flowpp_jax.compress', f'--workdir={workdir}',
                        command, str(source), str(target)], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize('isa', ['AVX', 'SSE4_2'])
def test_files_cross_instruction_sets_and_thread_counts(tmp_path, isa):
  # Here: the suite's process (XLA's widest vectors, all threads, optimisation level 0);
  # there: a process limited to `isa` on one thread, at XLA's default optimisation level.
  from flowpp_jax import api  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  initialised_workdir(workdir)
  images = np.concatenate([_images(), _images()[::-1]])
  np.save(tmp_path / 'images.npy', images)
  there = f'--xla_cpu_max_isa={isa} --xla_cpu_multi_thread_eigen=false'
  _compress(workdir, 'encode', tmp_path / 'images.npy', tmp_path / 'there.fppz', there)
  model = api.load(str(workdir))
  np.testing.assert_array_equal(model.decompress((tmp_path / 'there.fppz').read_bytes()),
                                images)
  (tmp_path / 'here.fppz').write_bytes(model.compress(images))
  _compress(workdir, 'decode', tmp_path / 'here.fppz', tmp_path / 'back.npy', there)
  np.testing.assert_array_equal(np.load(tmp_path / 'back.npy'), images)


if __name__ == '__main__':
  write_files(pathlib.Path(sys.argv[1]))
