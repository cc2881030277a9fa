"""From a PyTorch model to a GHN graph: fx tracing, the primitives and their rules, graph building.

:mod:`~ghninit.graph.trace` turns a model into an fx graph of leaf modules and functions
symbolically, :mod:`~ghninit.graph.concrete` by running it on an example input where that fails
(:mod:`~ghninit.graph.example_inputs` infers one; ``trace_model.trace_model`` chooses), with the
process-wide patches of both confined to the tracing thread by :mod:`~ghninit.graph.patches`;
:mod:`~ghninit.graph.primitives` maps each leaf to the GHN's 15 primitives (with
:mod:`~ghninit.graph.timm_rules` for timm's own layers); :mod:`~ghninit.graph.build` assembles the
:class:`Graph` the GHN reads (nodes, edges, virtual edges) with the GHN-2 or GHN-3 rules.
Imports nothing from the rest of ghninit but :mod:`ghninit.errors`.
"""

from ..errors import TraceError
from .build import GHN2_RULES, GHN3_RULES, Graph, Node, build_graph
from .leaf_tracer import register_leaf_module

__all__ = ["GHN2_RULES", "GHN3_RULES", "Graph", "Node", "TraceError", "build_graph", "register_leaf_module"]
