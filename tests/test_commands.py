"""One layer of commands: each is one module, python -m flowpp_jax.NAME, whose --help lists
its own flags; no module of the package imports a command."""
import ast
import pathlib
import subprocess
import sys

import pytest

from conftest import ROOT

# Each command and the flags its --help must list.
COMMANDS = {
    'main': ('config', 'workdir', 'mode', 'distributed', 'coordinator_address'),
    'bench': ('config', 'steps', 'sample_num', 'compile_only', 'target', 'max_batch_compiles'),
    'compress': ('workdir', 'step', 'batch_size'),
    'import_weights': ('config', 'weights', 'workdir', 'export', 'export_layout'),
    'prepare': ('config', 'dataset', 'data_dir', 'manual_dir'),
    'roundtrip': ('config', 'batch', 'trials'),
    'plot_runs': ('out', 'metric', 'title'),
    'tools.codec_bench': ('config', 'images', 'batch_size', 'init_images'),
    'tools.codec_drift': ('workdir', 'count', 'reference'),
    'tools.compare_codecs': ('workdir', 'batch_size'),
    'tools.kernel_bench': ('positions', 'examples', 'heads', 'head_dim', 'filters', 'repeats',
                           'peak_size'),
}
PACKAGE = ROOT / 'flowpp_jax'


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_help_lists_the_commands_own_flags(command):
  result = subprocess.run([sys.executable, '-m', f'flowpp_jax.{command}', '--help'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode in (0, 1), result.stderr[-2000:]  # absl's --help exits with 1
  listed = result.stdout.partition('\nflags:\n')[2]
  for flag in COMMANDS[command]:
    assert f'--{flag}:' in listed or f'--[no]{flag}:' in listed, (flag, result.stdout[-3000:])


def _module_name(path: pathlib.Path) -> str:
  return '.'.join(path.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')


def test_no_module_imports_a_command():
  commands = {f'flowpp_jax.{name}' for name in COMMANDS}
  on_disk = {_module_name(p) for p in PACKAGE.rglob('*.py')}
  assert commands <= on_disk
  for path in PACKAGE.rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module:
        imported = {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
      elif isinstance(node, ast.Import):
        imported = {alias.name for alias in node.names}
      else:
        continue
      assert not imported & commands, f'{path.relative_to(ROOT)} imports {imported & commands}'
