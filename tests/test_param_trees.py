"""The parameter trees of the shipped configs, pinned: every name, nesting level, shape and
dtype, so that a refactor cannot silently change what a workdir's checkpoint holds (it would
no longer restore) or what the official weights map onto.

tests/fixtures/param_trees/<config>.txt was written by ``param_tree_lines`` below at the
commit that introduced it; a deliberate change of the tree rewrites the file in its commit."""
import jax
import pytest

from flowpp_jax import model as model_lib
from conftest import ROOT, load_config

PINNED = ('cifar10', 'imagenet32', 'imagenet64', 'digits')


def param_tree_lines(model_cfg) -> list:
  """'path shape dtype' of every parameter, in the tree's order."""
  leaves = jax.tree_util.tree_flatten_with_path(model_lib.abstract_params(model_cfg))[0]
  return [f'{jax.tree_util.keystr(path, simple=True, separator="/")} '
          f'{list(leaf.shape)} {leaf.dtype}' for path, leaf in leaves]


@pytest.mark.parametrize('name', PINNED)
def test_parameter_tree_is_pinned(name):
  pinned = (ROOT / 'tests' / 'fixtures' / 'param_trees' / f'{name}.txt').read_text()
  assert param_tree_lines(load_config(name).model) == pinned.splitlines()
