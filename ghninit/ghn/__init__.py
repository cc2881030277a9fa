"""The hypernetworks: GHN-2 (gated graph network) and GHN-3 (Graphormer), on one base class and shared decoders."""

from .base import GHNBase
from .ghn3 import GHN3
from .model import GHN2

__all__ = ["GHN2", "GHN3", "GHNBase"]
