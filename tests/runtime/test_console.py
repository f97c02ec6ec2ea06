"""The commands' console measures (flowpp_jax/runtime/console.py), each against the real
report it is there for: orbax, tensorstore and asyncio produce it in a fresh interpreter, once
as a library user sees it and once under the measures. If an upstream release changes a
report, the first half fails and says the measure no longer matches."""
import subprocess
import sys
import textwrap

import pytest

PRELUDE = '''
import gc, sys
from absl import flags, logging as absl_logging
flags.FLAGS(['command'])  # as absl.app.run starts a command: flags, then absl's handler
absl_logging.use_absl_handler()
if sys.argv[1] == 'quiet':
  from flowpp_jax.runtime import console
  console.quiet_libraries(verbose=False)
'''

# A failed read stops orbax's event loop while tensorstore's other reads are in flight.
FAILED_READ = '''
import pathlib, numpy as np, ml_collections
from flowpp_jax.trainer import checkpointing
directory = pathlib.Path(sys.argv[2])
config = ml_collections.ConfigDict({'filters': 1})
state = {f'p{i}': np.full((20000 + i,), i, np.float32) for i in range(200)}
checkpoints = checkpointing.Checkpoints(directory)
checkpoints.save(3, state, {'model': checkpointing.model_signature(config)})
checkpoints.wait()
checkpoints.close()
manifest = directory / 'checkpoints' / '3' / 'state' / 'manifest.ocdbt'
manifest.write_bytes(bytes(reversed(manifest.read_bytes())))
checkpoints = checkpointing.Checkpoints(directory, read_only=True)
try:
  checkpoints.restore(3, state, config)
except checkpointing.CheckpointError as e:
  print('CheckpointError', flush=True)
checkpoints.close()
gc.collect()
import time; time.sleep(2)  # tensorstore's reads still in flight call back meanwhile
'''

# The same, made deterministic: a read in flight (a tensorstore future awaited by an asyncio
# task) completes after its event loop was closed.
CLOSED_LOOP = '''
import asyncio
import tensorstore
promise, future = tensorstore.Promise.new()
async def read():
  return await future
loop = asyncio.new_event_loop()
task = loop.create_task(read())
loop.run_until_complete(asyncio.sleep(0.01))
loop.close()
promise.set_exception(ValueError('DATA_LOSS: a sibling read failed'))
del task
gc.collect()
'''

# A task whose exception nobody awaits, as orbax leaves its failed reads' and writes' siblings.
UNRETRIEVED = '''
import asyncio
async def write():
  raise OSError(28, 'No space left on device')
loop = asyncio.new_event_loop()
task = loop.create_task(write())
loop.run_until_complete(asyncio.sleep(0.01))
del task
loop.close()
gc.collect()
'''

# orbax logs through absl: a read-only manager warns about its directory.
ORBAX_RECORD = '''
import pathlib
from flowpp_jax.trainer import checkpointing
absl_logging.set_verbosity(absl_logging.WARNING)  # so that only the filter can drop it
pathlib.Path(sys.argv[2], 'checkpoints').mkdir(parents=True)
checkpointing.Checkpoints(sys.argv[2], read_only=True).close()
'''


def run(script, mode, *args):
  result = subprocess.run([sys.executable, '-c', textwrap.dedent(PRELUDE + script), mode,
                           *map(str, args)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.parametrize('script,reports', [
    (CLOSED_LOOP, ('Event loop is closed', 'Task was destroyed but it is pending')),
    (UNRETRIEVED, ('Task exception was never retrieved',)),
    (ORBAX_RECORD, ('Given directory is read only',)),
])
def test_each_measure_drops_the_report_it_is_there_for(script, reports, tmp_path):
  plain = run(script, 'plain', tmp_path / 'plain')
  for report in reports:
    assert report in plain.stderr, plain.stderr[-2000:]
  quiet = run(script, 'quiet', tmp_path / 'quiet')
  assert quiet.stderr == '', quiet.stderr[-2000:]


def test_a_damaged_checkpoint_read_is_quiet(tmp_path):
  """orbax's failed read itself: whatever its in-flight reads report (how many finish after
  its loop stopped varies from run to run), nothing reaches the console."""
  quiet = run(FAILED_READ, 'quiet', tmp_path)
  assert quiet.stdout == 'CheckpointError\n' and quiet.stderr == '', quiet.stderr[-2000:]


COMMAND = '''
import sys
from absl import flags
from flowpp_jax.runtime import cli
flags.DEFINE_string('dir', None, 'where the checkpoint goes')


def main(argv):
  sys.argv = ['-c', 'quiet', flags.FLAGS.dir]  # what FAILED_READ reads
  try:
    exec(FAILED_READ.replace("print('CheckpointError', flush=True)", 'raise'),
         {'sys': sys, 'gc': __import__('gc')})
  except Exception as e:
    cli.fail(str(e).splitlines()[0])


cli.run(main, required='dir')
'''


def test_an_error_line_is_the_last_line(tmp_path):
  """A command that fails on a damaged checkpoint prints its error line and nothing after it,
  while orbax's threads wind down."""
  script = f'FAILED_READ = {FAILED_READ!r}\n' + COMMAND
  result = subprocess.run([sys.executable, '-c', script, f'--dir={tmp_path}'],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: checkpoint '), result.stderr[-3000:]
