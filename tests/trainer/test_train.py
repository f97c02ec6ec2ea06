"""The trainer end to end, as users run it: train, eval, sample and the Python API on digits;
exact resume after SIGTERM and kill -9; and a real train step through the tfds reader."""
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest
from scipy import special

import flowpp_jax
from flowpp_jax.data import datasets
from flowpp_jax.data import images as images_lib
from flowpp_jax.runtime import cpu_devices
from flowpp_jax.trainer import experiment, loop, steps
from conftest import ROOT, assert_one_error_line, load_config, tiny_model_config

TINY = '--config=configs/digits.py:tiny'
TIMING_KEYS = ('steps_per_s', 'examples_per_s')


def command(workdir, *args):
  return [sys.executable, '-m', 'flowpp_jax.main', TINY, f'--workdir={workdir}', *args]


def cli(workdir, *args, env=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', **(env or {}))
  return subprocess.run(command(workdir, *args), cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """An uninterrupted run of the tiny digits config (24 steps), steps 2 and 3 profiled (the
  resumed runs compared with it are not: the profiler changes no number)."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  result = cli(workdir, '--config.profile_steps=2')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def tensorboard_events(logdir):
  """The Event protos of every TensorBoard event file in ``logdir`` (TFRecord framing: length,
  its CRC, the record, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(logdir.glob('events.out.tfevents.*')):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      events.append(event_pb2.Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def final_state(workdir):
  exp = experiment.Experiment(load_config('digits', 'tiny'), workdir, read_only=True)
  return exp.restore()


def test_train_writes_metrics_eval_and_samples(trained):
  workdir, stdout = trained
  rows = read_rows(workdir)
  train_rows = [r for r in rows if 'train_bpd' in r]
  assert [r['step'] for r in train_rows] == [4, 8, 12, 16, 20, 24]
  for row in train_rows:
    assert {'lr', 'grad_norm', 'steps_per_s', 'examples_per_s', 'nonfinite_total'} <= set(row)
    assert np.isfinite(row['train_bpd']) and row['nonfinite_total'] == 0
  assert [r['step'] for r in rows if 'eval_bpd' in r] == [12, 24]
  result = json.loads((workdir / 'eval.json').read_text())
  assert set(result) == {'step', 'bpd', 'bpd_iw', 'num_examples', 'num_iw_samples', 'split'}
  assert result['split'] == 'test'
  assert (result['step'], result['num_examples'], result['num_iw_samples']) == (24, 40, 4)
  assert result['bpd'] < np.log2(17) + 1
  # Both figures again, from the model's log weights of the same draws, reduced in float64
  # by scipy: the evaluator's averaging, log-mean-exp and units.
  model = flowpp_jax.load(workdir)
  images = datasets.load_split('digits', 'test')[np.arange(40)]
  keys = steps.example_keys(0, steps.EVAL_TAG, np.arange(40))
  log_weights = jax.jit(lambda *args: steps.log_weights(model.model, *args, num_samples=4))
  log_w = np.asarray(log_weights(model.params, images, keys), np.float64)  # [K, B] nats
  nats_per_bpd = -64 * np.log(2.0)
  np.testing.assert_allclose(result['bpd'], log_w.mean() / nats_per_bpd, rtol=1e-5)
  iw = special.logsumexp(log_w, axis=0) - np.log(4)
  np.testing.assert_allclose(result['bpd_iw'], iw.mean() / nats_per_bpd, rtol=1e-5)
  assert 'ETA' in stdout and 'bits/dim' in stdout
  # One device per core (up to what divides the batch sizes, 16 and 20).
  devices = cpu_devices.divisor_count(cpu_devices.usable_cores(), (16, 20))
  assert f'on {devices} cpu device(s)' in stdout
  samples = np.load(workdir / 'samples' / 'step_00000024_t1.npy')
  assert samples.dtype == np.uint8 and samples.shape == (16, 8, 8, 1) and samples.max() <= 16
  grid = np.asarray(Image.open(workdir / 'samples' / 'step_00000024_t1.png'))
  assert grid.shape == (4 * 9 * 8 + 8, 4 * 9 * 8 + 8)  # 4x4 tiles of 8x8, x8, 1 pixel gaps
  # TensorBoard: the scalars, the sample grids as images, and the profile of steps 2 and 3.
  summaries = [(event.step, value) for event in tensorboard_events(workdir / 'tensorboard')
               for value in event.summary.value]
  assert {step for step, v in summaries if v.tag == 'train_bpd'} == {4, 8, 12, 16, 20, 24}
  images = [(step, v.image) for step, v in summaries if v.tag == 'samples/temperature_1']
  assert [step for step, _ in images] == [12, 24]
  tb_grid = np.asarray(Image.open(io.BytesIO(images[-1][1].encoded_image_string)))
  expected = images_lib.sample_grid(samples, 17)  # one channel: TensorBoard shows it as RGB
  np.testing.assert_array_equal(tb_grid, np.repeat(expected, 3, axis=-1))
  assert 'profiling steps 2..3' in stdout
  assert len(list((workdir / 'tensorboard' / 'plugins' / 'profile').glob('*/*.xplane.pb'))) == 1
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == [12, 18, 24]
  state = final_state(workdir)
  assert int(state.step) == 24
  pairs = zip(jax.tree_util.tree_leaves(state.ema_params),
              jax.tree_util.tree_leaves(state.params))
  assert not all(np.array_equal(ema, p) for ema, p in pairs)  # the EMA lags the parameters


def test_eval_is_deterministic_and_agrees_with_the_api(trained):
  workdir, _ = trained
  before = json.loads((workdir / 'eval.json').read_text())
  result = cli(workdir, '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((workdir / 'eval.json').read_text()) == before
  assert f'{before["bpd_iw"]:.4f}' in result.stdout
  # The API draws image i's dequantization noise from (seed, i) exactly as eval does.
  model = flowpp_jax.load(workdir)
  images = datasets.load_split('digits', 'test')[np.arange(40)]
  bpd_iw = model.bpd(images, seed=0, num_iw_samples=4)
  assert bpd_iw.shape == (40,)
  np.testing.assert_allclose(bpd_iw.mean(), before['bpd_iw'], rtol=1e-5)


def test_sample_mode_writes_grid_and_array(trained):
  workdir, _ = trained
  result = cli(workdir, '--mode=sample', '--config.sample.num=4',
               '--config.sample.temperature=0.5')
  assert result.returncode == 0, result.stderr[-3000:]
  samples = np.load(workdir / 'samples' / 'step_00000024_t0.5.npy')
  assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8
  assert (workdir / 'samples' / 'step_00000024_t0.5.png').read_bytes()[:4] == b'\x89PNG'


def test_samples_do_not_depend_on_the_device_count(trained):
  """The sampler decodes the latents split over the local devices, the last device's share
  padded: 3 images on 1 and on 2 devices, and through the API (this process: 1 device), are
  the same images."""
  workdir, _ = trained
  drawn = []
  for env in ({'FLOWPP_CPU_DEVICES': '1'},
              {'XLA_FLAGS': '--xla_backend_optimization_level=0 '
                            '--xla_force_host_platform_device_count=2'}):
    result = cli(workdir, '--mode=sample', '--config.sample.num=3',
                 '--config.sample.temperature=0.7', env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    drawn.append(np.load(workdir / 'samples' / 'step_00000024_t0.7.npy'))
  assert drawn[0].shape == (3, 8, 8, 1)
  assert len(np.unique(drawn[0])) > 2  # real images, so the comparison can fail
  np.testing.assert_array_equal(drawn[0], drawn[1])
  # Against the model's own sample method, one jitted program on one device: the trainer's
  # and --mode=sample's key is (seed, step), the API's (seed, 0).
  model = flowpp_jax.load(workdir)

  def direct(step):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), steps.SAMPLE_TAG),
                             step)
    return np.asarray(jax.jit(lambda p, k: model.model.apply(
        {'params': p}, k, 3, np.float32(0.7), method=model.model.sample))(model.params, key))
  np.testing.assert_array_equal(drawn[0], direct(24))
  np.testing.assert_array_equal(model.sample(3, seed=0, temperature=0.7), direct(0))


def test_api_log_prob_does_not_depend_on_the_device_count(trained):
  """log_prob splits the images over the local devices (5 images on 2: one padded)."""
  workdir, _ = trained
  script = ('import json, sys, jax, numpy as np, flowpp_jax\n'
            'from flowpp_jax.data import datasets\n'
            'model = flowpp_jax.load(sys.argv[1])\n'
            'images = datasets.load_split("digits", "test")[np.arange(5)]\n'
            'bpd = model.bpd(images, seed=3, num_iw_samples=2).tolist()\n'
            'print(json.dumps([jax.local_device_count(), bpd]))')
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_backend_optimization_level=0 '
             '--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-c', script, str(workdir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  devices, bpd = json.loads(result.stdout.strip().splitlines()[-1])
  assert devices == 2
  model = flowpp_jax.load(workdir)
  assert jax.local_device_count() == 1
  want = model.bpd(datasets.load_split('digits', 'test')[np.arange(5)], seed=3,
                   num_iw_samples=2)
  assert want.shape == (5,) and np.ptp(want) > 0
  np.testing.assert_allclose(bpd, want, rtol=1e-6)


def test_api_round_trip_and_bad_input(trained):
  workdir, _ = trained
  model = flowpp_jax.load(workdir)
  assert model.step == 24
  images = datasets.load_split('digits', 'test')[np.arange(8)]
  z = model.encode(images, seed=3)
  assert z.shape == (8, *model.latent_shape) and z.dtype == np.float32
  np.testing.assert_array_equal(model.decode(z), images)
  nats = model.log_prob(images, seed=1)
  assert nats.shape == (8,) and np.isfinite(nats).all()
  np.testing.assert_array_equal(nats, model.log_prob(images, seed=1))
  sample = model.sample(5, seed=2, temperature=0.8)
  assert sample.shape == (5, 8, 8, 1) and sample.dtype == np.uint8
  np.testing.assert_array_equal(sample, model.sample(5, seed=2, temperature=0.8))
  with pytest.raises(ValueError, match='uint8'):
    model.log_prob(images.astype(np.float32))
  with pytest.raises(ValueError, match='shape'):
    model.encode(images[:, :4])
  with pytest.raises(ValueError, match='num_levels'):
    model.bpd(np.full_like(images, 17))
  with pytest.raises(ValueError, match='latents'):
    model.decode(z[:, :2])
  with pytest.raises(ValueError, match='floating'):
    model.decode(z.astype(np.int32))


def wait_for(predicate, process, timeout=300.0):
  """Polls until predicate() or the process exits; True if predicate() held."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if process.poll() is not None:
      return predicate()
    time.sleep(0.01)
  raise TimeoutError


def checkpoint_steps(workdir):
  directory = workdir / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / '_CHECKPOINT_METADATA').exists())


def stop_at_first_checkpoint(process, workdir, signum):
  """Sends ``signum`` to the training ``process`` as soon as its first checkpoint exists;
  returns its (stdout, stderr) once it has exited."""
  try:
    assert wait_for(lambda: checkpoint_steps(workdir), process)
    process.send_signal(signum)
    return process.communicate(timeout=300)
  finally:
    process.kill()


def assert_same_run(workdir, reference):
  """The run in ``workdir`` ended with the reference run's state and metrics, bit for bit."""
  ours, theirs = final_state(workdir), final_state(reference)
  leaves = jax.tree_util.tree_leaves
  assert all(np.array_equal(a, b) for a, b in zip(leaves(ours), leaves(theirs)))
  strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]
  assert strip(read_rows(workdir)) == strip(read_rows(reference))


def test_resume_after_sigterm_and_kill_is_bit_identical(trained, tmp_path):
  reference, _ = trained
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  popen = lambda: subprocess.Popen(command(workdir), cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  # 1. Preemption: SIGTERM once the first checkpoint exists -> checkpoint, exit 143.
  process = popen()
  out, err = stop_at_first_checkpoint(process, workdir, signal.SIGTERM)
  assert process.returncode == loop.PREEMPTED_EXIT_CODE, err[-3000:]
  preempted_at = max(checkpoint_steps(workdir))
  assert f'saved the checkpoint of step {preempted_at}' in out
  # 2. Restart, then kill -9 as soon as it has saved a newer checkpoint.
  process = popen()
  try:
    assert wait_for(lambda: max(checkpoint_steps(workdir)) > preempted_at, process)
    killed_mid_run = process.poll() is None
    process.kill()
    process.communicate(timeout=300)
  finally:
    process.kill()
  assert killed_mid_run, 'the run finished before it could be killed'
  # 3. Restart to the end.
  result = cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from' in result.stdout
  assert_same_run(workdir, reference)
  assert (workdir / 'eval.json').read_text() == (reference / 'eval.json').read_text()


def with_default_sigint(args):
  """The command ``args`` started with SIGINT at its default disposition, as a user's Ctrl-C
  finds it (a child of a non-interactive shell inherits it ignored; exec keeps the default).
  No preexec_fn: forking a multithreaded (JAX) process may deadlock there."""
  return [sys.executable, '-c', 'import os, signal, sys; signal.signal(signal.SIGINT, '
          'signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])', *args]


def start_training(workdir, *args):
  return subprocess.Popen(with_default_sigint(command(workdir, *args)), cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_ctrl_c_saves_and_resume_is_bit_identical(trained, tmp_path):
  reference, _ = trained
  workdir = tmp_path / 'run'
  process = start_training(workdir)
  out, err = stop_at_first_checkpoint(process, workdir, signal.SIGINT)
  assert process.returncode == 130, err[-3000:]
  stopped_at = max(checkpoint_steps(workdir))
  assert f'Ctrl-C: saved the checkpoint of step {stopped_at} in {workdir}' in out
  assert 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
  assert stopped_at < 24 and not (workdir / 'train.lock').exists()
  result = cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_same_run(workdir, reference)


def test_a_second_run_on_a_training_workdir_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  process = start_training(workdir, '--config.num_train_steps=1000000')
  try:
    assert wait_for(lambda: checkpoint_steps(workdir), process)
    second = cli(workdir)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=300)
  finally:
    process.kill()
  assert_one_error_line(second, f'{workdir} is in use by pid {process.pid} on ',
                        'stop that run or pass another --workdir')
  assert process.returncode == 130


_TWO_CTRL_C = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)
from flowpp_jax.trainer import loop
request = loop._StopRequest('CHECKPOINTS')
os.kill(os.getpid(), signal.SIGINT)
assert request.requested and request.exit_code == 130
print('first Ctrl-C: asked to stop', flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
"""


def test_a_second_ctrl_c_exits_at_once():
  result = subprocess.run([sys.executable, '-c', _TWO_CTRL_C], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 130, result.stderr[-3000:]
  assert result.stdout == 'first Ctrl-C: asked to stop\n'
  assert result.stderr == ('second Ctrl-C: stopped without saving; the checkpoints in '
                           'CHECKPOINTS are intact\n')


_CTRL_C_AT_ONCE = """
import os, signal, time
from flowpp_jax.trainer import interrupt
interrupt.exit_on_ctrl_c('--mode=eval')
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
"""


def test_ctrl_c_in_eval_sample_and_bench_is_one_line():
  result = subprocess.run([sys.executable, '-c', _CTRL_C_AT_ONCE], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert (result.returncode, result.stderr) == (130, '--mode=eval: stopped by Ctrl-C\n')


_HOLD_LOCK = """
import sys, time
from flowpp_jax.trainer import workdir_lock
workdir_lock.WorkdirLock(sys.argv[1]).acquire()
print('held', flush=True)
time.sleep(120)
"""


def test_a_live_lock_refuses_and_changes_nothing(trained, tmp_path):
  workdir = damaged_copy(trained, tmp_path, lambda _: None)
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(workdir)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    before = snapshot(workdir)
    result = cli(workdir)
  finally:
    holder.kill()
    holder.wait()
  assert_one_error_line(result, f'{workdir} is in use by pid {holder.pid} on ',
                        'stop that run or pass another --workdir')
  assert snapshot(workdir) == before
  # Its process is gone, and so is its kernel lock: the record it left does not block.
  from flowpp_jax.trainer import workdir_lock  # pylint: disable=g-import-not-at-top
  workdir_lock.WorkdirLock(workdir).acquire().release()
  assert not (workdir / 'train.lock').exists()
  # A record from another host is honoured, with what to do if that run is gone.
  (workdir / 'train.lock').write_text(json.dumps(
      {'host': 'elsewhere', 'pid': 12, 'started': '2026-01-01T00:00:00+00:00'}))
  assert_one_error_line(cli(workdir), 'in use by pid 12 on elsewhere since 2026-01-01',
                        f'delete {workdir / "train.lock"}')


@pytest.fixture
def small_disk(tmp_path):
  """mount(size) mounts an empty tmpfs of ``size`` bytes at the returned path (root only), or
  resizes it; unmounted at the end."""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  mounted = []

  def mount(size):
    options = f'remount,size={size}' if mounted else f'size={size}'
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode and not mounted:
      pytest.skip(f'cannot mount a tmpfs here: {result.stderr.strip()}')
    assert result.returncode == 0, result.stderr
    mounted.append(size)
    return mount_point

  yield mount
  if mounted:
    subprocess.run(['umount', str(mount_point)], check=True)


def test_a_full_disk_stops_the_run_and_a_restart_resumes(trained, small_disk):
  reference, _ = trained
  state_dir = reference / 'checkpoints' / '24'
  page = 4096
  checkpoint_size = sum(-(-p.stat().st_size // page) * page
                        for p in state_dir.rglob('*') if p.is_file())
  # Room for the first checkpoint (step 6) and the small files, but not for the second.
  workdir = small_disk(checkpoint_size * 3 // 2) / 'run'
  assert_one_error_line(cli(workdir), f'no space left on the disk of {workdir}',
                        'free space and run the same command',
                        'newest complete checkpoint (step 6)')
  assert checkpoint_steps(workdir) == [6]
  assert not list((workdir / 'checkpoints').glob('*tmp*')), 'the failed save was left behind'
  assert not (workdir / 'train.lock').exists()
  small_disk(64 * 2**20)  # space freed
  result = cli(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'resuming from {workdir}/checkpoints/6' in result.stdout
  assert_same_run(workdir, reference)


def test_train_step_through_tfds_reader_at_cifar10_shapes(tmp_path):
  """cifar10 through tfds.data_source (mocked by tfds.testing.mock_data) into a real train
  step, eval and sample with a tiny model."""
  tfds = pytest.importorskip('tensorflow_datasets')
  rng = np.random.RandomState(0)
  splits = {'train': rng.randint(0, 256, (12, 32, 32, 3)).astype(np.uint8),
            'test': rng.randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)}
  fake = lambda builder, split, **kwargs: [{'image': im, 'label': 0} for im in splits[split]]
  config = load_config('cifar10')
  config.model = tiny_model_config((32, 32, 3), main_layout='checker1', dequant_kind='uniform')
  config.update(batch_size=4, init_batch_size=4, num_train_steps=2, log_every_steps=1,
                eval_every_steps=2, checkpoint_every_steps=2, sample_every_steps=0)
  config.eval.update(num_examples=0, num_iw_samples=2, batch_size=4, train_num_examples=6)
  config.sample.num = 2
  with tfds.testing.mock_data(as_data_source_fn=fake):
    state = loop.train(experiment.Experiment(config, tmp_path))
  assert int(state.step) == 2
  result = json.loads((tmp_path / 'eval.json').read_text())
  assert result['num_examples'] == 6 and np.isfinite(result['bpd'])
  assert np.isfinite(result['bpd_iw'])
  assert np.load(tmp_path / 'samples' / 'step_00000002_t1.npy').shape == (2, 32, 32, 3)


def snapshot(directory):
  """{relative path: (size, mtime, bytes)} of every file below directory."""
  return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(directory.rglob('*')) if p.is_file()}


def damaged_copy(trained, tmp_path, damage):
  workdir = tmp_path / 'run'
  shutil.copytree(trained[0], workdir)
  damage(workdir / 'checkpoints' / '24' / 'state')
  return workdir


def truncate_largest(state_dir):
  largest = max((p for p in state_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  with largest.open('r+b') as f:
    f.truncate(largest.stat().st_size // 2)


def scramble_manifest(state_dir):
  manifest = state_dir / 'manifest.ocdbt'
  manifest.write_bytes(bytes(reversed(manifest.read_bytes())))


@pytest.mark.parametrize('damage', [truncate_largest, scramble_manifest])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_damaged_checkpoint_is_reported_and_kept(trained, tmp_path, damage, mode):
  workdir = damaged_copy(trained, tmp_path, damage)
  before = snapshot(workdir)
  assert_one_error_line(cli(workdir, f'--mode={mode}'), 'unreadable', 'checkpoints/24')
  assert snapshot(workdir) == before


def test_other_architecture_is_refused_and_checkpoints_kept(trained, tmp_path):
  workdir = damaged_copy(trained, tmp_path, lambda _: None)
  before = snapshot(workdir)
  result = cli(workdir, '--config.model.main.filters=16')
  assert_one_error_line(result, 'another architecture')
  assert snapshot(workdir) == before


@pytest.mark.parametrize('args,env,fragments', [
    (['--config.nonsense=1'], {}, ['unknown config field']),
    (['--config.batch_size=abc'], {}, ['bad command line', 'batch_size']),
    (['--config.optimizer.ema_decay=1.5'], {}, ['optimizer.ema_decay']),
    (['--config.eval.num_iw_samples=0'], {}, ['eval.num_iw_samples']),
    (['--config.lr.decay=cosine'], {}, ['lr.decay']),
    (['--config.batch_size=15'],
     {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, ['divisible', '2 devices']),
    (['--config.dataset=cifar10'], {}, ['model.image_shape', 'cifar10']),
    ([], {'FLOWPP_CPU_DEVICES': 'two'}, ['FLOWPP_CPU_DEVICES', 'positive integer']),
    (['--mode=eval'], {}, ['no checkpoint']),
])
def test_bad_input_gives_one_error_line(tmp_path, args, env, fragments):
  workdir = tmp_path / 'run'
  assert_one_error_line(cli(workdir, *args, env=env), *fragments)
  assert not (workdir / 'checkpoints').exists() or not any((workdir / 'checkpoints').iterdir())


def test_unprepared_dataset_names_the_prepare_command(tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', 'flowpp_jax.main', '--config=configs/cifar10.py',
       f'--workdir={tmp_path / "run"}', f'--config.data_dir={empty}'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=600)
  assert_one_error_line(result, 'python -m flowpp_jax.prepare --dataset=cifar10')
  assert list(empty.iterdir()) == []
