"""Shared pieces of the configs in configs/: each config file starts from these and sets
what the official launcher for its dataset sets."""
import ml_collections


def flow_config(*, layout: str, filters: int, blocks: int, components: int,
                pointwise: bool, weight_norm: bool = False, out_concat_elu: bool = False,
                out_kernel: int = 3, mixer: str = 'attention', coupling: str = 'mixlogistic',
                heads: int = 4) -> ml_collections.ConfigDict:
  """One flow stack (the main flow, or the dequantizer's flow): layout and coupling nets."""
  return ml_collections.ConfigDict(dict(
      layout=layout, pointwise=pointwise, coupling=coupling, components=components,
      filters=filters, blocks=blocks, heads=heads, mixer=mixer, weight_norm=weight_norm,
      out_concat_elu=out_concat_elu, out_kernel=out_kernel))


def dequant_config(*, kind: str = 'variational', context_features: int = 32,
                   context_blocks: int, context_layer_norm: bool, context_mixer: str,
                   **flow_kwargs) -> ml_collections.ConfigDict:
  """The dequantizer: its flow (as flow_config) plus its context network."""
  cfg = flow_config(**flow_kwargs)
  cfg.kind = kind
  cfg.context_features = context_features
  cfg.context_blocks = context_blocks
  cfg.context_layer_norm = context_layer_norm
  cfg.context_mixer = context_mixer
  return cfg


def model_config(*, image_shape, main, dequant, dropout: float, num_levels: int = 256,
                 norm: str = 'norm', checkerboard: str = 'columns',
                 compute_dtype: str = 'float32') -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      image_shape=tuple(image_shape), num_levels=num_levels, dropout=dropout, norm=norm,
      checkerboard=checkerboard, compute_dtype=compute_dtype, main=main, dequant=dequant))


def base_config() -> ml_collections.ConfigDict:
  """Fields every config has; the dataset configs fill in ``model`` and override the rest."""
  config = ml_collections.ConfigDict()
  config.dataset = ''
  config.seed = 0
  config.model = ml_collections.ConfigDict()
  return config
