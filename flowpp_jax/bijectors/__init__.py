"""Pure-functional bijectors: each maps (x, context) -> (y, log|det J| per example)."""
from flowpp_jax.bijectors.base import (Bijector, Chain, Inverse, PartwiseBijector, first_part,
                                       run_chain, sum_per_example)
from flowpp_jax.bijectors.coupling import AffineCoupling, MixLogisticCoupling
from flowpp_jax.bijectors.elementwise import LogitPreprocess, Sigmoid
from flowpp_jax.bijectors.norm import ActNorm, Norm
from flowpp_jax.bijectors.pointwise import Pointwise
from flowpp_jax.bijectors.splits import (ChannelSplit, Checkerboard2DSplit, CheckerboardSplit,
                                         SpaceToDepth, TupleFlip)

__all__ = [
    'Bijector', 'Chain', 'Inverse', 'PartwiseBijector', 'first_part', 'run_chain',
    'sum_per_example',
    'AffineCoupling', 'MixLogisticCoupling', 'LogitPreprocess', 'Sigmoid', 'ActNorm', 'Norm',
    'Pointwise', 'ChannelSplit', 'Checkerboard2DSplit', 'CheckerboardSplit', 'SpaceToDepth',
    'TupleFlip',
]
