"""From predicted tensors to the user's parameters: shaping, the all-or-nothing write, wrappers, meta models.

:mod:`~ghninit.write.tensors` scales and tiles a predicted block to a parameter's shape;
:mod:`~ghninit.write.assign` checks every tensor first and then writes them all (or none);
:mod:`~ghninit.write.wrapped` unwraps DDP/compiled models (and refuses FSDP1);
:mod:`~ghninit.write.sharded` writes FSDP2/tensor-parallel (``DTensor``) models, each rank its own shard;
:mod:`~ghninit.write.meta` materialises models built on the ``meta`` device;
:mod:`~ghninit.write.postprocess` holds the optional orthogonalisation after prediction.
Imports nothing from the rest of ghninit but :mod:`ghninit.errors`.
"""

from ..errors import PredictionError, ShardedModelError
from .assign import prepare, reset_batchnorm_statistics, write
from .postprocess import Orthogonalize, orthogonalize_

__all__ = [
    "Orthogonalize",
    "PredictionError",
    "ShardedModelError",
    "orthogonalize_",
    "prepare",
    "reset_batchnorm_statistics",
    "write",
]
