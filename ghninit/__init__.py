"""ghninit: initialise any PyTorch model with parameters predicted by a Graph HyperNetwork (GHN-2)."""

from .graph import Graph, build_graph
from .trace import TraceError, register_leaf_module

__all__ = ["Graph", "build_graph", "TraceError", "register_leaf_module"]
