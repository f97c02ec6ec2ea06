"""A gs:// workdir: every file the trainer writes outside orbax goes through etils.epath.

The bucket is a local folder behind epath's own test mock, made as strict as GCS: no append
(gcsfs would silently overwrite) and no folders to create.
"""
import io
import json
import os
import pathlib
import types

from etils import epath
import ml_collections
import numpy as np
import pytest

from flowpp_jax.data import images
from flowpp_jax.runtime import fileio
from flowpp_jax.trainer import evaluate, experiment, reporting, sampling

BUCKET = 'gs://test-bucket/run'


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://test-bucket/... is tmp_path/gcs/test-bucket/...; returns that local folder."""
  root = tmp_path / 'gcs'
  root.mkdir()
  monkeypatch.chdir(tmp_path)  # a URI mistaken for a local path would land here

  def local(path):
    path = os.fspath(path)
    return str(root / path[len('gs://'):]) if path.startswith('gs://') else path

  def on_local(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def open_(fn, path, mode):
    if os.fspath(path).startswith('gs://'):
      assert 'a' not in mode, f'append to {path}: gcsfs would overwrite it'
      os.makedirs(os.path.dirname(local(path)), exist_ok=True)
    return fn(local(path), mode)

  def no_folders(fn, path, **kwargs):
    assert not os.fspath(path).startswith('gs://'), f'mkdir {path} in a bucket'
    return fn(path, **kwargs)

  monkeypatch.setattr(fileio, '_has_gcs_client', lambda: True)  # gcsfs stands for the mock
  with epath.testing.mock_epath(open=open_, exists=on_local, isdir=on_local, glob=on_local,
                                listdir=on_local, stat=on_local, makedirs=no_folders,
                                mkdir=no_folders):
    yield root / 'test-bucket' / 'run'
  assert not (tmp_path / 'gs:').exists()


def test_scheme(monkeypatch):
  monkeypatch.setattr(fileio, '_has_gcs_client', lambda: True)
  assert fileio.scheme('gs://b/run') == 'gs'
  assert fileio.is_remote(epath.Path('gs://b/run') / 'x.json')
  assert not fileio.is_remote('/tmp/run') and not fileio.is_remote('runs/a')
  assert not fileio.is_remote(pathlib.Path('gs://b/run'))  # pathlib made it local: gs:/b/run
  assert str(fileio.path('gs://b/run') / 'samples') == 'gs://b/run/samples'


def test_gs_without_client_is_one_error(monkeypatch):
  monkeypatch.setattr(fileio.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(ValueError, match='pip install gcsfs'):
    fileio.path('gs://b/run')
  assert str(fileio.path('/tmp/run')) == '/tmp/run'


def test_reporter_rewrites_metrics_and_skips_tensorboard(bucket, monkeypatch):
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(record_writer, 'GCS_ENABLED', False)  # google-cloud-storage missing
  stream = io.StringIO()
  reporter = reporting.Reporter(BUCKET, total_steps=10, stream=stream)
  for step in (1, 2, 3):
    reporter.write(step, {'loss': step / 2})
  reporter.close()
  rows = [json.loads(line) for line in (bucket / 'metrics.jsonl').read_text().splitlines()]
  assert rows == [{'step': s, 'loss': s / 2} for s in (1, 2, 3)]
  assert stream.getvalue().count('pip install google-cloud-storage') == 1

  resumed = reporting.Reporter(BUCKET, total_steps=10, resume_step=2, stream=io.StringIO())
  resumed.write(3, {'loss': 9.0})
  rows = [json.loads(line) for line in (bucket / 'metrics.jsonl').read_text().splitlines()]
  assert [row['loss'] for row in rows] == [0.5, 1.0, 9.0]


def test_samples_config_and_eval_json(bucket, monkeypatch):
  samples = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1) % 17
  png = sampling.save(BUCKET, 7, samples, 17, 1.0)
  assert str(png) == f'{BUCKET}/samples/step_00000007_t1.png'
  assert (bucket / 'samples' / 'step_00000007_t1.png').read_bytes() == images.encode_png(
      np.repeat(np.repeat(images.make_grid(images.to_display(samples, 17)), 8, 0), 8, 1))
  np.testing.assert_array_equal(np.load(bucket / 'samples' / 'step_00000007_t1.npy'), samples)

  config = ml_collections.ConfigDict({'model': {'image_shape': (8, 8, 1)}, 'seed': 3,
                                      'data': {'bits': 5}})
  experiment.Experiment.write_config(types.SimpleNamespace(
      workdir=BUCKET, config=config, _data=None))
  assert experiment.load_config(BUCKET).to_json() == config.to_json()

  exp = types.SimpleNamespace(workdir=BUCKET, config=ml_collections.ConfigDict(
      {'eval': {'num_iw_samples': 2, 'num_examples': 0}}),
      data=types.SimpleNamespace(eval_split='test'))
  monkeypatch.setattr(evaluate, 'make_evaluator', lambda exp, k: lambda params, n: {
      'bpd': 1.5, 'bpd_iw': 1.25, 'num_examples': 5})
  evaluate.evaluate_and_report(exp, None, 9)
  assert json.loads((bucket / 'eval.json').read_text())['bpd_iw'] == 1.25


def test_local_workdir_still_appends(tmp_path):
  reporter = reporting.Reporter(tmp_path, total_steps=2, stream=io.StringIO())
  reporter.write(1, {'loss': 1.0})
  reporter.write(2, {'loss': 2.0})
  reporter.close()
  assert len((tmp_path / 'metrics.jsonl').read_text().splitlines()) == 2
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_write_text_keeps_the_old_file_when_the_write_fails(tmp_path):
  target = tmp_path / 'eval.json'
  fileio.write_text(target, 'old\n')
  with pytest.raises(UnicodeEncodeError):  # fails after the file was opened, as ENOSPC does
    fileio.write_text(target, 'new \udc80\n')
  assert target.read_text() == 'old\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['eval.json']


def test_is_disk_full_sees_through_wrappers():
  full = OSError(28, 'No space left on device')
  try:
    try:
      raise full
    except OSError as e:
      raise RuntimeError('Save Finalize thread failed') from e
  except RuntimeError as wrapped:
    assert fileio.is_disk_full(wrapped)
  assert fileio.is_disk_full(ValueError('RESOURCE_EXHAUSTED: Error writing "x": '
                                        '[OSError 28] No space left on device'))
  # An accelerator out of memory is not a full disk.
  assert not fileio.is_disk_full(RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating'))
  assert not fileio.is_disk_full(OSError(13, 'Permission denied'))


def test_a_metrics_row_cut_short_is_dropped_on_resume(tmp_path):
  rows = [json.dumps({'step': s, 'train_bpd': 1.0}) + '\n' for s in (4, 8)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(rows) + '{"step": 12, "train_')
  reporter = reporting.Reporter(tmp_path, total_steps=24, resume_step=12)
  reporter.write(16, {'train_bpd': 2.0})
  reporter.close()
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [4, 8, 16]
