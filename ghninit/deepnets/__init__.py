"""The DeepNets-1M architecture space and its deterministic generator.

    >>> from ghninit import deepnets
    >>> net = deepnets.darts(num_classes=10, cells=14, channels=48, stem="cifar")
    >>> spec = deepnets.generate("test", 0)       # architecture 0 of the TEST split
    >>> model = spec.build(num_classes=10, image_size=32)

``python -m ghninit.deepnets stats --split test -n 500`` prints the split statistics.
"""

from .generator import SPLITS, ArchSpec, count_parameters, describe, generate, iterate
from .genotypes import DARTS, OPERATIONS, VIT, Genotype, parse_operation, sample_genotype
from .net import Cell, Network, darts
from .ops import ChannelSE, PosEnc, SelfAttention, TransformerBlock

__all__ = [
    "DARTS",
    "OPERATIONS",
    "SPLITS",
    "VIT",
    "ArchSpec",
    "Cell",
    "ChannelSE",
    "Genotype",
    "Network",
    "PosEnc",
    "SelfAttention",
    "TransformerBlock",
    "count_parameters",
    "darts",
    "describe",
    "generate",
    "iterate",
    "parse_operation",
    "sample_genotype",
]
