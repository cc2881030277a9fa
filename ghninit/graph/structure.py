"""The GHN graph of a network as data: :class:`Node`, :class:`Graph`, and :class:`GraphRules` with the two rule sets.

A :class:`Graph` holds its nodes in topological order and its real and virtual edges as one
``(E, 3)`` array; :data:`GHN2_RULES` and :data:`GHN3_RULES` name each way the two GHN families
describe a network differently. :func:`ghninit.graph.build.build_graph` makes graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .algorithms import _longest_path_levels
from .primitives import PRIMITIVE_INDEX
from .trace import SYMBOLIC


@dataclass(frozen=True)
class GraphRules:
    """How one GHN family describes a network: each field is one rule that differs between families.

    Attributes:
        name: ``"ghn2"`` or ``"ghn3"``.
        shape_edges: values read from a tensor's shape (``x.shape[0]``) carry an edge (GHN-2's
            fx description); GHN-3 follows autograd, where they do not.
        mean_is_pool: every mean is ``glob_avg``, also one that drops the reduced dims.
        gated_cse: in a network with a sigmoid/swish op, a product with a gate activation is
            ``cse`` and only the global pool feeding the classifier head is kept; without such
            an op, products are never ``cse``.
        msa_needs_weights: ``nn.MultiheadAttention`` called with ``need_weights=False`` (fused
            attention, no softmax) has no ``msa`` node.
        pool_before_classifier: a global pool after the final layer moves before its weight.
        flat_1x1_classifier: a 1x1-conv classifier weight is recorded 2-D.
        token_pos_enc: a ``(1, N, C)`` positional embedding is predicted, recorded as
            ``(1, C, floor(sqrt N), floor(sqrt N))``.
        softmax_is_msa: a softmax outside an attention layer with its own rule is an ``msa``
            node, and the other inputs of the node after it are rerouted as GHN-3 does.
        detached_unbiased_linear: an ``nn.Linear`` without bias is a weight node fed by the input
            node only, beside the layer's input (as autograd shows it), except the reduction of
            torchvision's Swin patch merging, which GHN-3 rewires in line; weight nodes without
            inputs are fed by the input node.
        generation_order: nodes ordered by depth level (longest path from a source), as
            networkx's topological sort orders them; the classifier is the last two nodes; a
            positional-embedding source node then moves to just before the node it feeds (GHN-3
            inserts it there after sorting).
    """

    name: str
    shape_edges: bool = True
    mean_is_pool: bool = False
    gated_cse: bool = False
    msa_needs_weights: bool = False
    pool_before_classifier: bool = False
    flat_1x1_classifier: bool = False
    token_pos_enc: bool = False
    softmax_is_msa: bool = False
    detached_unbiased_linear: bool = False
    generation_order: bool = False


GHN2_RULES = GraphRules("ghn2")
GHN3_RULES = GraphRules(
    "ghn3",
    shape_edges=False,
    mean_is_pool=True,
    gated_cse=True,
    msa_needs_weights=True,
    pool_before_classifier=True,
    flat_1x1_classifier=True,
    token_pos_enc=True,
    softmax_is_msa=True,
    detached_unbiased_linear=True,
    generation_order=True,
)


@dataclass
class Node:
    """A node of the GHN graph.

    Attributes:
        name: the parameter's full name (``"layer1.0.conv1.weight"``) or, for ops, the op's
            name with its fx node (``"sum:add_3"``).
        primitive: one of the 15 primitives.
        shape: parameter shape, pooling shape ``(1, 1, k, k)``, or ``None``.
        module: path of the module the node belongs to (``""`` for the root), or ``None``.
        param: full parameter name for parameter nodes, else ``None``.
        bias: for norm-layer nodes, the bias predicted together with the weight.
        param_shape: the parameter's own shape where the rules record a different ``shape``
            (GHN-3: a token positional embedding, a 1x1-conv classifier), else ``None``.
        transposed: the parameter is stored as the transpose of ``shape`` (a linear map kept
            ``(in, out)``, Hugging Face's ``Conv1D``); the prediction is written transposed.
    """

    name: str
    primitive: str
    shape: tuple[int, ...] | None = None
    module: str | None = None
    param: str | None = None
    bias: str | None = None
    param_shape: tuple[int, ...] | None = None
    transposed: bool = False

    @property
    def target_shape(self) -> tuple[int, ...] | None:
        """The shape of the parameter a prediction is written to."""
        return self.param_shape if self.param_shape is not None else self.shape


@dataclass
class Graph:
    """A network as a GHN (GHN-2 or GHN-3, by ``rules``) sees it.

    Attributes:
        nodes: in topological order, ``input`` first.
        edges: ``(E, 3)`` int64 array of ``[src, dst, weight]``; weight 1 for real edges and the
            shortest-path distance for virtual ones.
        uncovered: parameters the graph does not describe, with the reason.
        rules: the rule set it was built with.
        n_outputs: how many outputs of the model the graph describes; with more than one, the last
            node is the ``concat`` sink joining them and the graph has no classifier.
        tracing: how the fx graph was obtained: ``"symbolic"`` or ``"example input"``.
        output_classes: GHN-3, when the model's output layer is a bias-free ``nn.Linear`` (a weight
            source node, so not in the classifier's place): its number of outputs, which decides
            whether the classifier's place is predicted; else ``None`` (the classifier's own).
        head: the classifier :func:`~ghninit.graph.build.build_graph` found, ``(weight, bias)``
            indices of the layer that produces the single output (either may be ``None``), or
            ``None`` where it was not looked for (graphs made by hand, the GHN-3 bias-free head
            above): then the classifier is found by position, the last two nodes.
        inputs: what the model was traced with when ghninit inferred it (each argument and how its
            value was guessed), else ``None``.
    """

    nodes: list[Node]
    edges: np.ndarray
    uncovered: dict[str, str] = field(default_factory=dict)
    rules: GraphRules = GHN2_RULES
    n_outputs: int = 1
    tracing: str = SYMBOLIC
    output_classes: int | None = None
    head: tuple[int | None, int | None] | None = None
    inputs: str | None = None

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def real_edges(self) -> np.ndarray:
        return self.edges[self.edges[:, 2] == 1]

    @property
    def virtual_edges(self) -> np.ndarray:
        return self.edges[self.edges[:, 2] > 1]

    @property
    def transposed(self) -> list[str]:
        """Parameters stored as the transpose of their node's shape (predictions are written transposed)."""
        return [node.param for node in self.nodes if node.transposed and node.param is not None]

    @cached_property
    def primitive_ids(self) -> torch.Tensor:
        return torch.tensor([PRIMITIVE_INDEX[n.primitive] for n in self.nodes], dtype=torch.long)

    @property
    def classifier(self) -> tuple[int | None, int | None]:
        """Indices of the classifier weight and bias: the layer that produces the output (:attr:`head`).

        A graph joining several outputs at a sink has none: every head is predicted as a layer.
        Without :attr:`head`, the weight is node n-2 and the bias node n-1, where they are such.
        """
        n = len(self.nodes)
        if self.n_outputs > 1:
            return None, None
        if self.head is not None:
            return self.head
        weight = n - 2 if n >= 2 and _is_param(self.nodes[n - 2], min_dim=2) else None
        bias = n - 1 if self.nodes[-1].primitive == "bias" else None
        return weight, bias

    def depth_levels(self, reverse: bool = False) -> list[np.ndarray]:
        """Groups of nodes that can be updated together.

        Forward: by longest path from the sources; reverse: by longest path to the sinks.
        No edge joins two nodes of one group.
        """
        return self._levels_backward if reverse else self._levels_forward

    @cached_property
    def _levels_forward(self) -> list[np.ndarray]:
        return _longest_path_levels(len(self.nodes), self.real_edges[:, 0], self.real_edges[:, 1])

    @cached_property
    def _levels_backward(self) -> list[np.ndarray]:
        n = len(self.nodes)
        return _longest_path_levels(n, n - 1 - self.real_edges[:, 1], n - 1 - self.real_edges[:, 0], flip=True)

    def to_networkx(self, virtual: bool = True):
        """A ``networkx.DiGraph`` with node attributes and edge ``weight`` (needs ``pip install "ghninit[graph]"``)."""
        try:
            import networkx as nx
        except ImportError as err:
            raise ImportError(f'Graph.to_networkx needs networkx: pip install "ghninit[graph]" ({err})') from err

        g = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            g.add_node(i, name=node.name, primitive=node.primitive, shape=node.shape, module=node.module)
        edges = self.edges if virtual else self.real_edges
        g.add_weighted_edges_from((int(s), int(d), int(w)) for s, d, w in edges)
        return g

    def __repr__(self) -> str:
        return f"Graph(nodes={len(self.nodes)}, real_edges={len(self.real_edges)}, virtual_edges={len(self.virtual_edges)})"

    def stats(self) -> dict:
        """Nodes, edges, depth, average degree and shortest path, primitive counts (see :func:`~ghninit.graph.draw.graph_stats`)."""
        from .draw import graph_stats

        return graph_stats(self)

    def draw(self, path, **options):
        """Draw the graph into ``path`` (PNG/SVG/PDF by extension; see :func:`~ghninit.graph.draw.draw_graph`)."""
        from .draw import draw_graph

        return draw_graph(self, path, **options)


def _is_param(node: Node, min_dim: int = 1) -> bool:
    return node.param is not None and node.shape is not None and len(node.shape) >= min_dim
