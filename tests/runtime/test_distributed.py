"""Data parallel over devices and processes, end to end through the command line.

Against one device at the same global batch: 8 simulated CPU devices in one process, and 2
processes x 2 devices joined by jax.distributed on localhost (gloo). The 8-device checkpoint
resumes on one device; a SIGTERM to one of the two processes stops both at the same step, and
they resume. Results may differ from one device's only by the order of float sums.

The runs start together in one module fixture: compiling is most of their time and it is
single-threaded.
"""
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from flowpp_jax.runtime import distributed, parallel
from flowpp_jax.trainer import evaluate, experiment, loop
from conftest import ROOT, assert_one_error_line

STEPS = 12
# The tiny digits config with one coupling stage, no attention and uniform dequantization: a
# model that compiles in seconds and still draws per-example dropout masks and noise, has a
# data-dependent init, Adam and an EMA. Every run: a row per step, checkpoints at 4, 8, 12, a
# periodic eval (40 test images) at the same steps; K = 1 makes the final eval the same program.
COMMON = ('--config=configs/digits.py:tiny', '--config.model.main.layout=checker1',
          '--config.model.main.mixer=none', '--config.model.dequant.kind=uniform',
          f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=4', '--config.eval_every_steps=4',
          '--config.sample_every_steps=0', '--config.keep_checkpoints=5',
          '--config.eval.num_iw_samples=1')
# The eval batch (20 in the config) must divide over 8 devices.
EIGHT_DEVICE_EVAL = ('--config.eval.batch_size=40',)
# 28 of 40 test images in batches of 20: in the second batch, process 0 holds 8 real
# images and 2 of padding, process 1 only padding.
TWO_PROCESS_EVAL = ('--config.eval.num_examples=28',)
TIMEOUT = 600
# What gloo prints to stdout as it connects. Its threads write each notice in two pieces, which
# may interleave ("A1 A2 B1 B2" or "A1 B1 B2 A2"), so each piece is removed on its own.
GLOO_NOTICE = re.compile(r'\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. '
                         r'|Expected number of connected peer ranks is : \d+\n?')
# float32 sums in another order: the losses agree to ~2e-7 (relative) and the parameters to
# ~2e-8, while each step moves a parameter by ~1e-4 and a wrong shard or key changes the loss
# by ~1e-2.
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-6


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Processes:
  """Started runs, each in its own process group (with its orbax and gloo threads), their
  output in files; kill() ends whatever still runs."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self._running = []

  def start(self, name, workdir, devices, *args, env=None):
    """python -m flowpp_jax.main ... on ``devices`` simulated CPU devices."""
    # JAX_NUM_CPU_DEVICES, not XLA_FLAGS' device count: XLA_FLAGS are part of the persistent
    # compilation cache key, so every device count would recompile even one-device programs.
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices), **(env or {}))
    out, err = (open(self.directory / f'{name}.{kind}', 'w') for kind in ('out', 'err'))
    with out, err:
      process = subprocess.Popen(
          [sys.executable, '-m', 'flowpp_jax.main', f'--workdir={workdir}', *COMMON, *args],
          cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
    process.name = name
    self._running.append(process)
    return process

  def output(self, process) -> str:
    """What ``process`` printed so far, without gloo's connection notices."""
    return GLOO_NOTICE.sub('', (self.directory / f'{process.name}.out').read_text())

  def finish(self, process, status: int = 0) -> str:
    """Waits for ``process``, checks its exit status; returns its stdout."""
    process.wait(timeout=TIMEOUT)
    stderr = (self.directory / f'{process.name}.err').read_text()
    assert process.returncode == status, f'{process.name}: {stderr[-3000:]}'
    return self.output(process)

  def wait_for_output(self, process, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in self.output(process):
      assert process.poll() is None, f'{process.name} exited before printing {text!r}'
      assert time.monotonic() < deadline, f'{process.name} did not print {text!r}'
      time.sleep(0.05)

  def kill(self) -> None:
    for process in self._running:
      with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
      process.wait()


def start_two_processes(processes, name, workdir, *args, by_env=False):
  """Processes 0 and 1 of one run, 2 devices each; settings as flags or (by_env) variables."""
  address = f'127.0.0.1:{free_port()}'
  started = []
  for index in range(2):
    settings = {'coordinator_address': address, 'num_processes': 2, 'process_id': index}
    if by_env:
      env = {distributed.ENV_VARS[k]: str(v) for k, v in settings.items()}
      flag_args = ()
    else:
      env = {}
      flag_args = tuple(f'--{k}={v}' for k, v in settings.items())
    started.append(processes.start(f'{name}{index}', workdir, 2, *flag_args, *args, env=env))
  return started


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Every run of the module, as {name: workdir} plus each process's stdout:

  one: 1 device, steps 0..12 (the reference).
  eight: 8 devices, 0..4; then on 1 device (the tiny config's eval), 4..12.
  two: 2 processes x 2 devices; SIGTERM to process 0 before its first step (so both stop
    after step 2); then both resume to 12 (the settings by environment this time).
  """
  root = tmp_path_factory.mktemp('distributed')
  processes = Processes(root)
  workdirs = {name: root / name for name in ('one', 'eight', 'two')}
  out = {}
  try:
    one = processes.start('one', workdirs['one'], 1)
    eight = processes.start('eight', workdirs['eight'], 8, '--config.num_train_steps=4',
                            *EIGHT_DEVICE_EVAL)
    two = start_two_processes(processes, 'two_stopped', workdirs['two'], *TWO_PROCESS_EVAL)
    # Printed after the SIGTERM handler is installed, before the first step.
    processes.wait_for_output(two[0], 'training steps')
    two[0].send_signal(signal.SIGTERM)
    out['two_stopped'] = [processes.finish(p, loop.PREEMPTED_EXIT_CODE) for p in two]
    out['two_stopped_checkpoints'] = sorted(
        int(p.name) for p in (workdirs['two'] / 'checkpoints').iterdir() if p.name.isdigit())
    two = start_two_processes(processes, 'two_resumed', workdirs['two'], *TWO_PROCESS_EVAL,
                              by_env=True)
    out['eight'] = processes.finish(eight)
    resumed = processes.start('eight_resumed', workdirs['eight'], 1)
    out['one'] = processes.finish(one)
    out['two_resumed'] = [processes.finish(p) for p in two]
    out['eight_resumed'] = processes.finish(resumed)
    yield workdirs, out
  finally:
    processes.kill()


def train_rows(workdir) -> dict:
  """{step: train_bpd} of metrics.jsonl; every step once."""
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps = [r['step'] for r in rows if 'train_bpd' in r]
  assert steps == sorted(set(steps)), steps  # one writer, no duplicated rows
  return {r['step']: r['train_bpd'] for r in rows if 'train_bpd' in r}


def eval_rows(workdir) -> dict:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['eval_bpd'] for r in rows if 'eval_bpd' in r}


def restore(workdir, step=None):
  exp = experiment.Experiment(experiment.load_config(workdir), workdir, read_only=True)
  return exp.restore(step)


def assert_states_close(ours, reference):
  assert int(ours.step) == int(reference.step)
  leaves = jax.tree_util.tree_leaves
  for name in ('params', 'ema_params', 'opt_state'):
    for a, b in zip(leaves(getattr(ours, name)), leaves(getattr(reference, name))):
      np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL, err_msg=name)


def assert_rows_close(ours: dict, reference: dict, steps):
  assert set(steps) <= set(ours), sorted(ours)
  np.testing.assert_allclose([ours[s] for s in steps], [reference[s] for s in steps],
                             rtol=LOSS_RTOL)


def test_the_tolerance_would_catch_a_wrong_update(runs):
  """Parameters move by far more than PARAM_ATOL in a few steps: matching within it means
  that every step made the same update."""
  one = runs[0]['one']
  before, after = restore(one, 8).params, restore(one).params
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                 jax.tree_util.tree_leaves(after))]
  assert np.median(moved) > 100 * PARAM_ATOL


def test_eight_devices_match_one_device(runs):
  workdirs, out = runs
  assert '8 cpu device(s)' in out['eight']
  one, eight = workdirs['one'], workdirs['eight']
  assert_rows_close(train_rows(eight), train_rows(one), range(1, 5))
  assert_rows_close(eval_rows(eight), eval_rows(one), [4])
  assert_states_close(restore(eight, 4), restore(one, 4))


def test_eight_device_checkpoint_resumes_on_one_device(runs):
  workdirs, out = runs
  assert f'resuming from {workdirs["eight"].absolute()}/checkpoints/4' in out['eight_resumed']
  assert '1 cpu device(s)' in out['eight_resumed']
  one, eight = workdirs['one'], workdirs['eight']
  assert_rows_close(train_rows(eight), train_rows(one), range(5, STEPS + 1))
  assert_rows_close(eval_rows(eight), eval_rows(one), [8, 12])
  assert_states_close(restore(eight), restore(one))


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
  workdirs, out = runs
  first, second = out['two_stopped']  # both exited with status 143
  assert '4 cpu device(s) in 2 processes' in first
  assert 'saved the checkpoint of step 2' in first
  assert not second.strip()  # only process 0 reports
  assert out['two_stopped_checkpoints'] == [2]


def test_two_processes_match_one_device(runs):
  workdirs, out = runs
  first, second = out['two_resumed']
  assert f'resuming from {workdirs["two"].absolute()}/checkpoints/2' in first
  assert not second.strip()
  two, one = workdirs['two'], workdirs['one']
  assert_rows_close(train_rows(two), train_rows(one), range(1, STEPS + 1))
  assert_rows_close(eval_rows(two), eval_rows(one), [4, 8, 12])
  assert_states_close(restore(two), restore(one))
  # One event file per run: process 1 wrote none.
  assert len(list((two / 'tensorboard').glob('events.out.tfevents.*'))) == 2


def test_eval_across_processes_with_padding_matches_one_device(runs):
  workdir = runs[0]['two']
  result = json.loads((workdir / 'eval.json').read_text())
  assert (result['step'], result['num_examples']) == (STEPS, 28)
  exp = experiment.Experiment(experiment.load_config(workdir), workdir, read_only=True)
  ours = evaluate.make_evaluator(exp, 1)(parallel.replicate(exp.restore().ema_params), 28)
  assert ours['num_examples'] == 28
  np.testing.assert_allclose(result['bpd'], ours['bpd'], rtol=1e-6)


@pytest.mark.parametrize('flags,env,args', [
    ({}, {}, None),
    (dict(distributed=True), {}, {}),
    (dict(coordinator_address='h:1', num_processes=2, process_id=1), {},
     dict(coordinator_address='h:1', num_processes=2, process_id=1)),
    ({}, {'FLOWPP_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'FLOWPP_NUM_PROCESSES': '4',
          'FLOWPP_PROCESS_ID': '3'},
     dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)),
    # A flag wins over its variable; --distributed with all three uses them.
    (dict(distributed=True, process_id=0), {'FLOWPP_COORDINATOR_ADDRESS': 'h:1',
                                            'FLOWPP_NUM_PROCESSES': '2',
                                            'FLOWPP_PROCESS_ID': '1'},
     dict(coordinator_address='h:1', num_processes=2, process_id=0)),
])
def test_initialize_args(flags, env, args):
  assert distributed.initialize_args(**flags, environ=env) == args


@pytest.mark.parametrize('flags,env,fragments', [
    (dict(num_processes=2), {}, ['--num_processes given without', '--coordinator_address',
                                 '--process_id (or FLOWPP_PROCESS_ID)']),
    (dict(distributed=True, coordinator_address='h:1'), {}, ['without']),
    (dict(coordinator_address='h', num_processes=2, process_id=0), {}, ['HOST:PORT']),
    (dict(coordinator_address='h:99999', num_processes=2, process_id=0), {}, ['HOST:PORT']),
    (dict(coordinator_address='h:1', num_processes=0, process_id=0), {}, ['>= 1']),
    (dict(coordinator_address='h:1', num_processes=2), {'FLOWPP_PROCESS_ID': '2'},
     ['FLOWPP_PROCESS_ID must be in [0, 2)']),
    ({}, {'FLOWPP_COORDINATOR_ADDRESS': 'h:1', 'FLOWPP_NUM_PROCESSES': 'two',
          'FLOWPP_PROCESS_ID': '0'}, ['FLOWPP_NUM_PROCESSES must be an integer']),
])
def test_initialize_args_refuses_bad_settings(flags, env, fragments):
  with pytest.raises(ValueError) as error:
    distributed.initialize_args(**flags, environ=env)
  for fragment in fragments:
    assert fragment in str(error.value), str(error.value)


@pytest.mark.parametrize('args,env,fragment', [
    (['--num_processes=2'], {'FLOWPP_PROCESS_ID': '1'}, 'without --coordinator_address'),
    (['--distributed'], {}, 'no Cloud TPU pod slice, SLURM or Open MPI job found'),
])
def test_bad_settings_give_one_error_line(tmp_path, args, env, fragment):
  # No cluster for --distributed to find, even when the tests run inside one.
  clean = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'OMPI_', 'PMI_', 'FLOWPP_'))}
  result = subprocess.run(
      [sys.executable, '-m', 'flowpp_jax.main', '--config=configs/digits.py:tiny',
       f'--workdir={tmp_path / "run"}', *args],
      cwd=ROOT, env=dict(clean, JAX_PLATFORMS='cpu', **env), capture_output=True, text=True,
      timeout=TIMEOUT)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines[-5:]
  assert fragment in lines[0]
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('process_id,fragment', [
    (1, 'could not reach the coordinator 127.0.0.1:{port} within 3 s (--coordinator_timeout): '
        'nothing listens there'),
    (0, 'not all 2 processes joined at 127.0.0.1:{port} within 3 s'),
])
def test_a_join_that_times_out_gives_one_error_line(tmp_path, process_id, fragment):
  # Process 1 finds no coordinator; process 0 is the coordinator, and process 1 never comes.
  port = free_port()
  result = subprocess.run(
      [sys.executable, '-m', 'flowpp_jax.main', '--config=configs/digits.py:tiny',
       f'--workdir={tmp_path / "run"}', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={process_id}', '--coordinator_timeout=3'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=TIMEOUT)
  assert_one_error_line(result, fragment.format(port=port))
  assert not (tmp_path / 'run').exists()
