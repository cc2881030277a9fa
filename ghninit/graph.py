"""The GHN graph of a network: nodes, real and virtual edges, depth levels, and its construction.

:func:`build_graph` walks the fx graph of a model in execution order. Each traced call either
becomes a chain of GHN nodes (through the rules in :mod:`ghninit.primitives`) or is dropped, in
which case its inputs flow on to its consumers. Only what feeds the model's (first) output is
kept. The resulting node order is topological with ``input`` first, so the classifier's weight and
bias end up last. Virtual edges (GHN-2) join every pair at shortest-path distance 2..50, computed
by dynamic programming over the DAG in topological order, without any all-pairs Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_flatten

from .primitives import NORM_PRIMITIVES, PRIMITIVE_INDEX, NodeSpec, function_rule, is_positional_encoding, module_rule
from .trace import TraceError, trace

VIRTUAL_EDGE_CUTOFF = 50


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
    """

    name: str
    primitive: str
    shape: tuple[int, ...] | None = None
    module: str | None = None
    param: str | None = None
    bias: str | None = None


@dataclass
class Graph:
    """A network as GHN-2 sees it.

    Attributes:
        nodes: in topological order, ``input`` first.
        edges: ``(E, 3)`` int64 array of ``[src, dst, weight]``; weight 1 for real edges and the
            shortest-path distance for virtual ones.
        uncovered: parameters the graph does not describe, with the reason.
    """

    nodes: list[Node]
    edges: np.ndarray
    uncovered: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def real_edges(self) -> np.ndarray:
        return self.edges[self.edges[:, 2] == 1]

    @property
    def virtual_edges(self) -> np.ndarray:
        return self.edges[self.edges[:, 2] > 1]

    @cached_property
    def primitive_ids(self) -> torch.Tensor:
        return torch.tensor([PRIMITIVE_INDEX[n.primitive] for n in self.nodes], dtype=torch.long)

    @property
    def classifier(self) -> tuple[int | None, int | None]:
        """Indices of the classifier weight (node n-2) and bias (node n-1), where they are such."""
        n = len(self.nodes)
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
        """A ``networkx.DiGraph`` with node attributes and edge ``weight``."""
        import networkx as nx

        g = nx.DiGraph()
        for i, node in enumerate(self.nodes):
            g.add_node(i, name=node.name, primitive=node.primitive, shape=node.shape, module=node.module)
        edges = self.edges if virtual else self.real_edges
        g.add_weighted_edges_from((int(s), int(d), int(w)) for s, d, w in edges)
        return g

    def __repr__(self) -> str:
        return f"Graph(nodes={len(self.nodes)}, real_edges={len(self.real_edges)}, virtual_edges={len(self.virtual_edges)})"


def _is_param(node: Node, min_dim: int = 1) -> bool:
    return node.param is not None and node.shape is not None and len(node.shape) >= min_dim


def _longest_path_levels(n: int, src: np.ndarray, dst: np.ndarray, flip: bool = False) -> list[np.ndarray]:
    """Level of each node = longest path from a source; nodes are in topological order (src < dst)."""
    level = np.zeros(n, dtype=np.int64)
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    # Process edges grouped by destination in increasing order: sources are final by then.
    starts = np.searchsorted(dst, np.arange(n))
    ends = np.searchsorted(dst, np.arange(n), side="right")
    for v in range(n):
        if ends[v] > starts[v]:
            level[v] = level[src[starts[v] : ends[v]]].max() + 1
    groups = [np.flatnonzero(level == lv) for lv in range(level.max() + 1 if n else 0)]
    return [n - 1 - g[::-1] for g in groups] if flip else groups


def shortest_path_lengths(n: int, real_edges: np.ndarray, cutoff: int = VIRTUAL_EDGE_CUTOFF) -> np.ndarray:
    """``(n, n)`` matrix of directed shortest-path lengths in a DAG (0 on the diagonal, inf if none).

    Nodes must be in topological order. Column ``v`` is the element-wise minimum over the
    columns of ``v``'s predecessors, plus one: one vectorised step per node.
    """
    dist = np.full((n, n), np.inf, dtype=np.float32)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in real_edges[:, :2]:
        preds[d].append(s)
    for v in range(n):
        if preds[v]:
            dist[:v, v] = dist[:v, preds[v]].min(axis=1) + 1
        dist[v, v] = 0
    dist[dist > cutoff] = np.inf
    return dist


def _with_virtual_edges(n: int, real_edges: np.ndarray, cutoff: int) -> np.ndarray:
    real = np.unique(real_edges, axis=0) if len(real_edges) else real_edges.reshape(0, 2)
    weights = np.zeros((n, n), dtype=np.int64)
    if cutoff > 1 and n:
        dist = shortest_path_lengths(n, real, cutoff)
        finite = np.isfinite(dist)
        weights[finite] = dist[finite].astype(np.int64)
    weights[real[:, 0], real[:, 1]] = 1
    src, dst = np.nonzero(weights)
    return np.stack([src, dst, weights[src, dst]], axis=1).astype(np.int64)


class _Builder:
    """Turns an fx graph into GHN nodes and real edges."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = dict(model.named_modules())
        self.nodes: list[Node] = []
        self.edges: list[tuple[int, int]] = []
        # Parameters are keyed by identity, so that tied weights (one tensor under several names)
        # become one node, named as at their first use in graph order.
        self.tensors = dict(model.named_parameters(remove_duplicate=False))
        self.node_of_param: dict[object, int] = {}
        self.covered: set[object] = set()
        self.uncovered: dict[str, str] = {}

    def key(self, name: str) -> object:
        """What identifies a parameter: its tensor (shared names share it), else its name."""
        tensor = self.tensors.get(name)
        return id(tensor) if tensor is not None else name

    def add_chain(self, specs: list[NodeSpec], sources: frozenset[int], module_path: str | None, label: str) -> int:
        """Add a chain of nodes fed by ``sources``; return the index of the chain's last node."""
        prev: Iterable[int] = sources
        for spec in specs:
            param = _join(module_path, spec.param) if spec.param else None
            if param is not None and self.key(param) in self.node_of_param:  # weights shared: one node
                idx = self.node_of_param[self.key(param)]
            else:
                idx = len(self.nodes)
                name = param if param is not None else f"{spec.primitive}:{label}"
                node = Node(name, spec.primitive, spec.shape, module_path, param)
                self.nodes.append(node)
                if param is not None:
                    self.node_of_param[self.key(param)] = idx
                    self.covered.add(self.key(param))
                    bias = param[: -len("weight")] + "bias" if param.endswith("weight") else _join(module_path, "bias")
                    if spec.primitive in NORM_PRIMITIVES and self._is_parameter(bias):
                        node.bias = bias  # the norm bias is predicted with its weight
                        self.covered.add(self.key(bias))
            self.edges.extend((p, idx) for p in prev if p != idx)
            prev = (idx,)
        return idx

    def _is_parameter(self, name: str) -> bool:
        try:
            self.model.get_parameter(name)
            return True
        except AttributeError:
            return False

    def visit(self, node: fx.Node, inputs: frozenset[int]) -> frozenset[int]:
        if node.op == "placeholder":
            if self.nodes:
                return frozenset()
            return frozenset([self.add_chain([NodeSpec("input")], frozenset(), None, "input")])
        if node.op == "get_attr":
            return self._visit_attribute(node)
        if node.op == "call_module":
            module = self.modules[node.target]
            rule = module_rule(module)
            specs = rule(module) if rule else None
            if not specs:
                self._note_uncovered(node.target, module)
                return inputs
            shared = [s for s in specs if s.param and self.key(_join(node.target, s.param)) in self.node_of_param]
            if shared and len(shared) == sum(1 for s in specs if s.param):
                return inputs  # a layer called again (shared weights) is described once, at its first call
            # A layer with some tied weights (b.weight = a.weight): its own tensors get nodes here.
            specs = [s for s in specs if s not in shared]
            return frozenset([self.add_chain(specs, inputs, node.target, node.name)])
        if node.op in ("call_function", "call_method"):
            rule = function_rule(node.target)
            specs = rule(node, self.modules) if rule else None
            if not specs or len(inputs) < specs[0].min_inputs:
                return inputs
            return frozenset([self.add_chain(specs, inputs, None, node.name)])
        return inputs

    def _visit_attribute(self, node: fx.Node) -> frozenset[int]:
        try:
            param = self.model.get_parameter(node.target)
        except AttributeError:
            return frozenset()  # a buffer or constant
        adds = [u for u in node.users if function_rule(u.target) is function_rule("add")]
        if adds and is_positional_encoding(param):
            module_path, _, attr = node.target.rpartition(".")
            spec = NodeSpec("pos_enc", attr, tuple(param.shape))
            return frozenset([self.add_chain([spec], frozenset(), module_path, node.name)])
        return frozenset()

    def _note_uncovered(self, path: str, module: nn.Module) -> None:
        kind = type(module).__name__
        for name, _ in module.named_parameters():  # a leaf's sub-layers are not in the graph either
            why = f"{kind} has no GHN rule" if "." not in name else f"inside {kind}, a leaf without a GHN rule"
            self.uncovered.setdefault(_join(path, name), why)


def _join(prefix: str | None, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _first_output(graph: fx.Graph) -> fx.Node:
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    node = _first_node(out.args[0])
    # A namedtuple of outputs (GoogLeNet's main and auxiliary logits): follow its first field.
    while (
        node is not None
        and node.op == "call_function"
        and isinstance(node.target, type)
        and issubclass(node.target, tuple)
    ):
        node = _first_node((node.args, node.kwargs))
    if node is not None:
        return node
    raise TraceError("the model's forward returns no tensor computed from its input")


def _first_node(args) -> fx.Node | None:
    leaves, _ = tree_flatten(args)
    return next((leaf for leaf in leaves if isinstance(leaf, fx.Node)), None)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def _topological_order(n: int, edges: np.ndarray) -> np.ndarray:
    """Stable topological order (Kahn, smallest index first); raises on cycles."""
    import heapq

    indegree = np.zeros(n, dtype=np.int64)
    succ: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        succ[s].append(d)
        indegree[d] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for d in succ[v]:
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, d)
    if len(order) != n:
        raise TraceError("the traced graph has a cycle (a layer whose weights are reused downstream of itself)")
    return np.array(order, dtype=np.int64)


def build_graph(
    model: nn.Module,
    leaf_modules: Iterable[type] = (),
    virtual_edge_cutoff: int = VIRTUAL_EDGE_CUTOFF,
) -> Graph:
    """Build the GHN-2 graph of ``model`` (no example input needed).

    Args:
        model: any ``nn.Module`` that torch.fx can trace, given ``leaf_modules``.
        leaf_modules: extra module types to keep as leaves.
        virtual_edge_cutoff: longest shortest-path turned into a virtual edge (1 disables them).

    Returns:
        a :class:`Graph`; export with ``graph.to_networkx()``.
    """
    fx_graph = trace(model, leaf_modules)
    needed = _ancestors(_first_output(fx_graph))
    builder = _Builder(model)
    outputs: dict[fx.Node, frozenset[int]] = {}
    for node in fx_graph.nodes:
        if node not in needed:
            continue
        inputs = frozenset().union(*(outputs.get(a, frozenset()) for a in node.all_input_nodes))
        outputs[node] = builder.visit(node, inputs)

    if not builder.nodes or builder.nodes[0].primitive != "input":
        raise TraceError(f"{type(model).__name__}: the output does not depend on the input")
    n = len(builder.nodes)
    real = np.array(sorted(set(builder.edges)), dtype=np.int64).reshape(-1, 2)
    nodes = builder.nodes
    if len(real) and (real[:, 0] >= real[:, 1]).any():
        order = _topological_order(n, real)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        nodes = [nodes[i] for i in order]
        real = rank[real]
    uncovered = {
        name: builder.uncovered.get(name, "not used on the path to the output through a supported op")
        for name, p in model.named_parameters()
        if id(p) not in builder.covered
    }
    for node in nodes:
        if node.primitive == "pos_enc" and node.shape is not None and len(node.shape) == 3:
            uncovered[node.param] = "token positional embedding: GHN-2 has no decoder for (1, N, C) tensors"
    return Graph(nodes, _with_virtual_edges(n, real, virtual_edge_cutoff), uncovered)


def count_parameters(shapes: Iterable[tuple[int, ...]]) -> int:
    """Total number of elements over ``shapes``."""
    return sum(math.prod(s) for s in shapes)
