"""A good guest: importing every module of flowpp_jax and using it as a library (a run's
checkpoint written, flowpp_jax.load, log_prob, sample, compress and decompress) leaves the
process as it found it: hooks (warnings.showwarning too), the asyncio, absl and root loggers, absl's verbosity, logging's
global switch, the signal handlers, os.environ and jax's configuration. Run in a fresh
interpreter, after the third-party libraries are imported (what they change is theirs)."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = '''
import logging, os, pkgutil, signal, sys, importlib, tempfile, warnings
import numpy as np
import jax, flax, optax, orbax.checkpoint, chex, ml_collections, tensorflow_datasets, PIL
import sklearn.datasets, constriction, etils.epath
from absl import flags, logging as absl_logging


def snapshot():
  loggers = {name: (list(log.handlers), list(log.filters), log.level, log.disabled,
                    log.propagate)
             for name, log in (('root', logging.getLogger()),
                               ('asyncio', logging.getLogger('asyncio')),
                               ('absl', logging.getLogger('absl')))}
  return {'unraisablehook': sys.unraisablehook, 'excepthook': sys.excepthook,
          'showwarning': warnings.showwarning,
          'loggers': loggers, 'logging.disable': logging.root.manager.disable,
          'absl verbosity': absl_logging.get_verbosity(),
          'absl handler filters': list(absl_logging.get_absl_handler().filters),
          'signals': {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
          'environ': dict(os.environ), 'jax config': dict(jax.config.values)}


before = snapshot()
import flowpp_jax
modules = [m.name for m in pkgutil.walk_packages(flowpp_jax.__path__, 'flowpp_jax.')]
for name in modules:
  importlib.import_module(name)
print(len(modules), 'modules imported')

sys.path.insert(0, sys.argv[1] + '/tests')
from conftest import initialised_workdir
workdir = tempfile.mkdtemp()
initialised_workdir(workdir)
model = flowpp_jax.load(workdir)
images = model.sample(2, seed=1)
assert np.all(np.isfinite(model.log_prob(images, num_iw_samples=2)))
assert (model.decompress(model.compress(images)) == images).all()

after = snapshot()
changed = [key for key in before if before[key] != after[key]]
for key in changed:
  if isinstance(before[key], dict):
    keys = set(before[key]) | set(after[key])
    print(key, {k: (before[key].get(k), after[key].get(k)) for k in keys
                if before[key].get(k) != after[key].get(k)})
  else:
    print(key, before[key], after[key])
print('changed:', changed)
'''


def test_the_library_changes_nothing_global():
  result = subprocess.run([sys.executable, '-c', SCRIPT, str(ROOT)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'modules imported' in result.stdout
  assert result.stdout.strip().endswith('changed: []'), result.stdout[-3000:]
