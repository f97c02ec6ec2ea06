"""What train, eval, sample and the Python API share: the checked config, the model, the
optimiser, the workdir's checkpoints, and the TrainState (created by data-dependent init or
restored from the latest checkpoint).
"""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flowpp_jax import config_defaults
from flowpp_jax import model as model_lib
from flowpp_jax.data import datasets, own_images
from flowpp_jax.runtime import fileio
from flowpp_jax.trainer import checkpointing, optim, steps

CONFIG_FILE = 'config.json'


def _field(config, name: str):
  """config['eval.num_examples'] -> config.eval.num_examples."""
  for part in name.split('.'):
    config = config[part]
  return config


def validate_run_config(config, device_count: int) -> None:
  """Raises ValueError naming the field when the config cannot run on ``device_count``
  devices."""
  info = datasets.describe(config)
  if tuple(config.model.image_shape) != tuple(info.image_shape):
    raise ValueError(f'model.image_shape {tuple(config.model.image_shape)} must match dataset '
                     f'{config.dataset!r}: {tuple(info.image_shape)}')
  if config.model.num_levels != info.num_levels:
    raise ValueError(f'model.num_levels {config.model.num_levels} must match the '
                     f'{info.num_levels} levels of dataset {config.dataset!r} (data.bits '
                     f'{config.data.bits}); set --config.model.num_levels={info.num_levels}')
  for name in ('batch_size', 'init_batch_size', 'log_every_steps', 'eval_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints', 'eval.num_iw_samples',
               'eval.batch_size', 'eval.train_num_examples', 'sample.num'):
    if not _field(config, name) >= 1:
      raise ValueError(f'{name} must be >= 1, got {_field(config, name)}')
  for name in ('num_train_steps', 'sample_every_steps', 'eval.num_examples'):
    if _field(config, name) < 0:
      raise ValueError(f'{name} must be >= 0, got {_field(config, name)}')
  if config.get('profile_steps', 0) < 0:  # absent from workdirs made before it
    raise ValueError(f'profile_steps must be >= 0, got {config.profile_steps}')
  if not config.sample.temperature > 0:
    raise ValueError(f'sample.temperature must be > 0, got {config.sample.temperature}')
  for name in ('batch_size', 'eval.batch_size'):
    if _field(config, name) % device_count:
      raise ValueError(
          f'{name} {_field(config, name)} is not divisible by the {device_count} devices JAX '
          f'sees; set --config.{name} to a multiple of {device_count}')
  optim.validate_optimizer_config(config.optimizer)
  optim.validate_lr_config(config.lr)


def abstract_state(config) -> steps.TrainState:
  """The TrainState of ``config``: its structure, shapes and dtypes, computed without
  allocating it (what a checkpoint is restored into)."""
  direction = optim.adam_direction(config.optimizer)
  return jax.eval_shape(lambda params: steps.create_state(params, direction),
                        model_lib.abstract_params(config.model))


class Experiment:
  """One config and one workdir."""

  def __init__(self, config, workdir, *, read_only: bool = False, device_count=None,
               data=None):
    """device_count: the devices batches must divide over (default: all JAX sees). data:
    the opened datasets.Data (default: opened at first use)."""
    validate_run_config(config, device_count or jax.device_count())
    self.config = config
    self.workdir = fileio.path(workdir)  # pathlib would turn gs://b/run into gs:/b/run
    self.info = datasets.describe(config)
    self._data = data
    self.model = model_lib.FlowPlusPlus(config.model)
    self.direction = optim.adam_direction(config.optimizer)
    self.schedule = optim.learning_rate_schedule(config.lr)
    if not read_only:
      fileio.makedirs(self.workdir)
    self.checkpoints = checkpointing.Checkpoints(self.workdir, keep=config.keep_checkpoints,
                                                 read_only=read_only)

  @property
  def data(self) -> datasets.Data:
    """The run's images, opened once (init, the train loop and the evaluator share them)."""
    if self._data is None:
      say = print if jax.process_index() == 0 else lambda *_: None
      self._data = datasets.open_data(self.config, self.workdir, say)
    return self._data

  def source(self, split: str):
    """Random-access images of 'train', or of 'test': the split eval scores (the training
    images where the data has no test split; see data.eval_split)."""
    return self.data.train if split == 'train' else self.data.test

  def _init_variables(self, images):
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(self.config.seed),
                                               steps.INIT_TAG), 3)
    return model_lib.init_variables(self.model, images, *keys)

  def init_state(self) -> steps.TrainState:
    """Data-dependent init on ``init_batch_size`` training images chosen by the seed (with
    dropout on, as the official code), then a fresh optimiser and EMA."""
    from flowpp_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    images = input_pipeline.sample_init_batch(self.source('train'),
                                              self.config.init_batch_size, self.config.seed)
    return jax.device_get(jax.jit(self._initial_state)(jnp.asarray(images)))

  def _initial_state(self, images):
    return steps.create_state(self._init_variables(images)['params'], self.direction)

  def abstract_state(self) -> steps.TrainState:
    """The TrainState's structure, shapes and dtypes, computed without allocating it."""
    return abstract_state(self.config)

  def restore(self, step=None):
    """The TrainState (host arrays) of checkpoint ``step`` (default: the latest), or None when
    the workdir has no checkpoint. Raises checkpointing.CheckpointError."""
    step = self.checkpoints.latest_step() if step is None else step
    if step is None:
      return None
    return self.checkpoints.restore(step, self.abstract_state(), self.config.model)

  def save(self, state) -> None:
    """Starts saving ``state`` (host arrays) as the checkpoint of its step."""
    step = int(np.asarray(state.step))
    self.checkpoints.save(step, state, {
        'model': checkpointing.model_signature(self.config.model), 'step': step})

  def write_config(self) -> None:
    """WORKDIR/config.json: the run's full config, which flowpp_jax.load reads back; and for
    your own images WORKDIR/data_split.json, the split that resumed and evaluated runs use
    (when the run has opened its data: the weights import writes a workdir without)."""
    if jax.process_index() == 0:
      fileio.write_text(fileio.path(self.workdir) / CONFIG_FILE,
                        self.config.to_json(indent=2) + '\n')
      if self._data is not None and self._data.record is not None:
        own_images.write_record(self.workdir, self._data.record)


def load_config(workdir) -> ml_collections.ConfigDict:
  """The config a run in ``workdir`` was started with (WORKDIR/config.json)."""
  path = fileio.path(workdir) / CONFIG_FILE
  if not path.exists():
    raise ValueError(f'{path} not found: is {workdir} the --workdir of a training run?')
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  config.model.image_shape = tuple(config.model.image_shape)
  if 'data' not in config:  # a workdir from before the data options: their defaults
    config.data = config_defaults.data_config()
  return config
