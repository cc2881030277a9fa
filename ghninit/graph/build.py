"""The GHN graph of a network: nodes, real and virtual edges, depth levels, and its construction.

:func:`build_graph` walks the fx graph of a model in execution order. Each traced call either
becomes a chain of GHN nodes (through the rules in :mod:`ghninit.graph.primitives`) or is dropped, in
which case its inputs flow on to its consumers. Everything that feeds any of the model's outputs
is kept (a tuple, list, dict, named tuple or dataclass of tensors; auxiliary training outputs,
fields or keys named ``aux*``, are left out as the reference GHNs leave them out). Several outputs
are joined at one ``concat`` sink node, the graph's last; a model with one output gets no sink, so
its graph is what it always was. The resulting node order is topological with ``input`` first, so
a single-output classifier's weight and bias end up last. Virtual edges (GHN-2) join every pair at shortest-path distance 2..50, computed
by dynamic programming over the DAG in topological order, without any all-pairs Python loop.

The two GHN families describe some networks differently; :class:`GraphRules` names each difference
as an option, and :data:`GHN2_RULES` / :data:`GHN3_RULES` are the two rule sets (GHN-3: pools over
flattened means kept, squeeze-excitation products as ``cse`` in networks with sigmoid/swish gates,
no edges through ``x.shape``, attention without weights has no ``msa`` node, the final global
pool moved before a 1x1-conv classifier, token positional embeddings predicted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, is_dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn as nn
from torch import fx
from torch.nn.utils import parametrize

from .concrete import SYMBOLIC, trace_model
from .primitives import (
    NORM_PRIMITIVES,
    PRIMITIVE_INDEX,
    SOFTMAX_TARGETS,
    NodeSpec,
    function_rule,
    gate_product_rule,
    is_detached_linear,
    is_gated_network,
    is_positional_encoding,
    is_shape_query,
    mean_as_pool_rule,
    module_rule,
    softmax_rule,
    without_unweighted_attention,
)
from .trace import TraceError

VIRTUAL_EDGE_CUTOFF = 50
_HEAD_PREFIXES = ("classifier", "fc", "head")


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
    """

    name: str
    primitive: str
    shape: tuple[int, ...] | None = None
    module: str | None = None
    param: str | None = None
    bias: str | None = None
    param_shape: tuple[int, ...] | None = None

    @property
    def target_shape(self) -> tuple[int, ...] | None:
        """The shape of the parameter a prediction is written to."""
        return self.param_shape if self.param_shape is not None else self.shape


@dataclass
class Graph:
    """A network as GHN-2 sees it.

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
    """

    nodes: list[Node]
    edges: np.ndarray
    uncovered: dict[str, str] = field(default_factory=dict)
    rules: GraphRules = GHN2_RULES
    n_outputs: int = 1
    tracing: str = SYMBOLIC
    output_classes: int | None = None

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
        """Indices of the classifier weight (node n-2) and bias (node n-1), where they are such.

        A graph joining several outputs at a sink has none: every head is predicted as a layer.
        """
        n = len(self.nodes)
        if self.n_outputs > 1:
            return None, None
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
    """``(n, n)`` matrix of directed shortest-path lengths in a DAG (0 on the diagonal, inf if none or over ``cutoff``).

    Nodes must be in topological order. Column ``v`` is the element-wise minimum over the
    columns of ``v``'s predecessors, plus one: one vectorised step per node.
    """
    capped, cap = _capped_distances(n, real_edges, cutoff)
    dist = capped.astype(np.float32)
    dist[capped >= cap] = np.inf
    return dist


def _capped_distances(n: int, real_edges: np.ndarray, cutoff: int) -> tuple[np.ndarray, int]:
    """Shortest-path lengths as in :func:`shortest_path_lengths`, and ``cap``: every length over
    ``cutoff`` (or no path) is ``cap``. Capping keeps the values small: one byte a pair for the
    usual cutoff (100 MB at 10k nodes)."""
    cap = max(min(cutoff, n), 0) + 1  # no path is longer than n - 1
    dtype = np.uint8 if cap < 255 else np.int64
    dist = np.full((n, n), cap, dtype=dtype)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in real_edges[:, :2].tolist():
        preds[d].append(s)
    for v in range(n):
        if preds[v]:
            column = dist[:v, preds[v]].min(axis=1)
            dist[:v, v] = np.minimum(column, cap - 1) + 1
        dist[v, v] = 0
    return dist, cap


def _with_virtual_edges(n: int, real_edges: np.ndarray, cutoff: int) -> np.ndarray:
    """``[src, dst, weight]`` rows, by source then destination: real edges (weight 1) and, with
    ``cutoff`` > 1, every pair at shortest-path distance 2..``cutoff`` (weight the distance)."""
    real = np.unique(real_edges, axis=0) if len(real_edges) else real_edges.reshape(0, 2).astype(np.int64)
    if cutoff <= 1 or not n:
        return np.concatenate([real, np.ones((len(real), 1), dtype=np.int64)], axis=1).astype(np.int64)
    dist, cap = _capped_distances(n, real, cutoff)
    dist[real[:, 0], real[:, 1]] = 1  # an edge against the node order, too
    np.fill_diagonal(dist, 0)
    src, dst = np.nonzero((dist > 0) & (dist < cap))
    return np.stack([src, dst, dist[src, dst].astype(np.int64)], axis=1).astype(np.int64)


class _Builder:
    """Turns an fx graph into GHN nodes and real edges."""

    def __init__(self, model: nn.Module, rules: GraphRules = GHN2_RULES, gated: bool = False):
        self.model = model
        self.rules = rules
        self.gated = gated  # the network has a sigmoid/swish op (GHN-3's gated_cse rule)
        self.modules = dict(model.named_modules())
        self.nodes: list[Node] = []
        self.edges: list[tuple[int, int]] = []
        # Parameters are keyed by identity, so that tied weights (one tensor under several names)
        # become one node, named as at their first use in graph order.
        self.tensors = dict(model.named_parameters(remove_duplicate=False))
        self.node_of_param: dict[object, int] = {}
        self.covered: set[object] = set()
        self.uncovered: dict[str, str] = {}
        # A tensor under torch.nn.utils.parametrize ("conv.weight") is computed from its originals
        # ("conv.parametrizations.weight.original*"), which the writer sets through right_inverse.
        self.parametrized = {
            _join(path, tensor): originals
            for path, module in self.modules.items()
            if parametrize.is_parametrized(module)
            for tensor, originals in module.parametrizations.items()
        }

    def key(self, name: str) -> object:
        """What identifies a parameter: its tensor (shared names share it), its parametrization, else its name."""
        tensor = self.tensors.get(name)
        if tensor is not None:
            return id(tensor)
        originals = self.parametrized.get(name)
        return id(originals) if originals is not None else name

    def join_outputs(self, outputs: list[frozenset[int]]) -> int:
        """Join several outputs' last nodes at one ``concat`` sink; returns how many outputs there are."""
        ends = [o for o in outputs if o]
        if len(ends) < 2 or len(frozenset().union(*ends)) < 2:
            return 1  # one output (or several ending in the same nodes): no sink, the graph as it always was
        self.add_chain([NodeSpec("concat")], frozenset().union(*ends), None, "output")
        return len(ends)

    def _cover(self, name: str) -> None:
        """Mark a parameter covered; a parametrized tensor covers its originals (written through right_inverse)."""
        self.covered.add(self.key(name))
        originals = self.parametrized.get(name)
        if originals is not None:
            self.covered.update(id(p) for p in originals.parameters())

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
                    self._cover(param)
                    bias = param[: -len("weight")] + "bias" if param.endswith("weight") else _join(module_path, "bias")
                    if spec.primitive in NORM_PRIMITIVES and self._is_parameter(bias):
                        node.bias = bias  # the norm bias is predicted with its weight
                        self._cover(bias)
            self.edges.extend((p, idx) for p in prev if p != idx)
            prev = (idx,)
        return idx

    def _is_parameter(self, name: str) -> bool:
        if name in self.parametrized:
            return True
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
            if rule is None and self.rules.softmax_is_msa and isinstance(module, nn.Softmax):
                rule = softmax_rule
            specs = rule(module) if rule else None
            if specs and self.rules.msa_needs_weights:
                specs = without_unweighted_attention(specs, module, node)
            if not specs:
                self._note_uncovered(node.target, module)
                return inputs
            shared = [s for s in specs if s.param and self.key(_join(node.target, s.param)) in self.node_of_param]
            if shared and len(shared) == sum(1 for s in specs if s.param):
                return inputs  # a layer called again (shared weights) is described once, at its first call
            # A layer with some tied weights (b.weight = a.weight): its own tensors get nodes here.
            specs = [s for s in specs if s not in shared]
            if self.rules.detached_unbiased_linear and is_detached_linear(module, node.target, self.modules):
                # autograd reaches this weight through a transpose, not from the layer's input: the
                # weight is a source beside the data, both feeding the layer's consumers
                return inputs | {self.add_chain(specs, frozenset(), node.target, node.name)}
            return frozenset([self.add_chain(specs, inputs, node.target, node.name)])
        if node.op in ("call_function", "call_method"):
            if not self.rules.shape_edges and is_shape_query(node):
                return frozenset()
            rule = self._function_rule(node.target)
            specs = rule(node, self.modules) if rule else None
            if not specs or len(inputs) < specs[0].min_inputs:
                return inputs
            return frozenset([self.add_chain(specs, inputs, None, node.name)])
        return inputs

    def _function_rule(self, target: object):
        rule = function_rule(target)
        if rule is None:
            return softmax_rule if self.rules.softmax_is_msa and target in SOFTMAX_TARGETS else None
        if self.rules.mean_is_pool and rule is function_rule("mean"):
            return mean_as_pool_rule
        if self.rules.gated_cse and rule is function_rule("mul"):
            return gate_product_rule if self.gated else None
        return rule

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


def _output_nodes(graph: fx.Graph, model: nn.Module) -> list[fx.Node]:
    """The fx nodes the model returns, in order, through tuples, lists, dicts, named tuples and dataclasses.

    Fields and keys named ``aux*`` (GoogLeNet's and Inception's auxiliary training logits) are left
    out, as the reference GHNs leave them out.
    """
    out = next(n for n in reversed(graph.nodes) if n.op == "output")
    found: list[fx.Node] = []

    def walk(value: object, name: str = "") -> None:
        if name.startswith("aux"):
            return
        if isinstance(value, fx.Node):
            target = value.target
            if (
                value.op == "call_function"
                and isinstance(target, type)
                and (issubclass(target, tuple) or is_dataclass(target))
            ):  # a named tuple or dataclass built in forward: its fields
                fields = getattr(target, "_fields", ())
                for i, arg in enumerate(value.args):
                    walk(arg, fields[i] if i < len(fields) else "")
                for key, arg in value.kwargs.items():
                    walk(arg, key)
            elif value not in found:
                found.append(value)
        elif isinstance(value, tuple) and hasattr(value, "_fields"):
            for key, arg in zip(value._fields, value):
                walk(arg, key)
        elif isinstance(value, list | tuple):
            for arg in value:
                walk(arg)
        elif isinstance(value, dict):
            for key, arg in value.items():
                walk(arg, str(key))

    walk(out.args[0])
    if not found:
        found = _hooked_outputs(graph, model)
    if not found:
        raise TraceError("the model's forward returns no tensor computed from its input")
    return found


def _hooked_outputs(graph: fx.Graph, model: nn.Module) -> list[fx.Node]:
    """For a model that returns what forward hooks collect (timm's ``FeatureHookNet``): the hooked modules' outputs.

    fx does not run hooks, so the traced forward returns nothing; each hooked module's output is
    the last traced node inside it.
    """
    hooked = [path for path, m in model.named_modules() if path and m._forward_hooks]
    last: dict[str, fx.Node] = {}
    for node in graph.nodes:
        scopes = node.meta.get("nn_module_stack", {})
        for path in hooked:
            if path in scopes or (node.op == "call_module" and node.target == path):
                last[path] = node
    position = {node: i for i, node in enumerate(graph.nodes)}
    return sorted(set(last.values()), key=position.__getitem__)


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    seen, stack = set(nodes), list(nodes)
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
    rules: GraphRules = GHN2_RULES,
    example_inputs: object = None,
) -> Graph:
    """Build the GHN graph of ``model``.

    Args:
        model: any ``nn.Module``; traced symbolically, or with an example input where that fails
            (see :func:`ghninit.graph.concrete.trace_model`).
        leaf_modules: extra module types to keep as leaves.
        virtual_edge_cutoff: longest shortest-path turned into a virtual edge (1 disables them).
        rules: :data:`GHN2_RULES` (default) or :data:`GHN3_RULES`.
        example_inputs: trace by running the model on these (a tuple of positional arguments, a
            dict of keyword arguments, or one tensor) instead of symbolically.

    Returns:
        a :class:`Graph`; export with ``graph.to_networkx()``.
    """
    fx_graph, tracing = trace_model(model, leaf_modules, example_inputs)
    returned = _output_nodes(fx_graph, model)
    needed = _ancestors(returned)
    modules = dict(model.named_modules())
    gated = rules.gated_cse and is_gated_network((n for n in fx_graph.nodes if n in needed), modules)
    builder = _Builder(model, rules, gated)
    outputs: dict[fx.Node, frozenset[int]] = {}
    for node in fx_graph.nodes:
        if node not in needed:
            continue
        inputs = frozenset().union(*(outputs.get(a, frozenset()) for a in node.all_input_nodes))
        outputs[node] = builder.visit(node, inputs)

    if not builder.nodes or builder.nodes[0].primitive != "input":
        raise TraceError(f"{type(model).__name__}: the output does not depend on the input")
    n_outputs = builder.join_outputs([outputs[node] for node in returned])
    nodes = builder.nodes
    real = np.array(sorted(set(builder.edges)), dtype=np.int64).reshape(-1, 2)
    if gated:  # GHN-3: in gated networks only the classifier head's global pool is a node
        nodes, real = _drop_nodes(nodes, real, [not _is_head_pool(i, nodes, real) for i in range(len(nodes))])
    if rules.softmax_is_msa:
        nodes, real = _reroute_attention_inputs(nodes, real)
    if rules.detached_unbiased_linear:
        real = _feed_weight_sources(nodes, real)
    nodes, real = _in_topological_order(nodes, real)
    if rules.generation_order:
        nodes, real = _in_generation_order(nodes, real)
        nodes, real = _pos_enc_before_consumer(nodes, real)
    if rules.pool_before_classifier:
        nodes, real = _pool_before_classifier(nodes, real)
    uncovered = {
        name: builder.uncovered.get(name, "not used on the path to the output through a supported op")
        for name, p in model.named_parameters()
        if id(p) not in builder.covered
    }
    for i, node in enumerate(nodes):
        tokens = node.primitive == "pos_enc" and node.shape is not None and len(node.shape) == 3
        if tokens and rules.token_pos_enc:
            side = math.isqrt(node.shape[1])
            node.shape, node.param_shape = (1, node.shape[2], side, side), node.shape
        elif tokens:
            uncovered[node.param] = "token positional embedding: GHN-2 has no decoder for (1, N, C) tensors"
        elif (
            rules.flat_1x1_classifier
            and n_outputs == 1
            and i == len(nodes) - 2
            and _is_param(node, 4)
            and max(node.shape[2:]) == 1
        ):
            node.shape, node.param_shape = node.shape[:2], node.shape
    output_classes = None
    if rules.detached_unbiased_linear and n_outputs == 1 and returned[0].op == "call_module":
        head = modules[returned[0].target]
        if is_detached_linear(head, returned[0].target, modules):
            output_classes = head.out_features
    edges = _with_virtual_edges(len(nodes), real, virtual_edge_cutoff)
    return Graph(nodes, edges, uncovered, rules, n_outputs=n_outputs, tracing=tracing, output_classes=output_classes)


def _topological_rank(n: int, real: np.ndarray) -> np.ndarray:
    """Each node's place in a topological order: its index where the edges already follow the index order."""
    if not len(real) or (real[:, 0] < real[:, 1]).all():
        return np.arange(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[_topological_order(n, real)] = np.arange(n)
    return rank


def _in_topological_order(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    if len(real) and (real[:, 0] >= real[:, 1]).any():
        order = _topological_order(len(nodes), real)
        rank = np.empty(len(nodes), dtype=np.int64)
        rank[order] = np.arange(len(nodes))
        return [nodes[i] for i in order], rank[real]
    return nodes, real


def _feed_weight_sources(nodes: list[Node], real: np.ndarray) -> np.ndarray:
    """An edge from the input (node 0) to every weight node that has no input."""
    fed = set(real[:, 1].tolist())
    extra = [(0, i) for i, n in enumerate(nodes) if i and i not in fed and n.param and "weight" in n.param]
    return np.array(sorted(set(map(tuple, real.tolist())) | set(extra)), dtype=np.int64).reshape(-1, 2)


def _in_generation_order(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """Stable reorder by longest path from a source (nodes must be in topological order)."""
    levels = _longest_path_levels(len(nodes), real[:, 0], real[:, 1])
    order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[order] = np.arange(len(nodes))
    return [nodes[i] for i in order], rank[real]


def _pos_enc_before_consumer(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """Move each ``pos_enc`` source node with one successor to just before that successor."""
    fed = set(real[:, 1].tolist())
    moved: dict[int, list[int]] = {}
    for i in (i for i, node in enumerate(nodes) if node.primitive == "pos_enc" and i not in fed):
        successors = real[real[:, 0] == i, 1]
        if len(successors) == 1:
            moved.setdefault(int(successors[0]), []).append(i)
    if not moved:
        return nodes, real
    skip = {i for group in moved.values() for i in group}
    order = [j for i in range(len(nodes)) if i not in skip for j in (*moved.get(i, ()), i)]
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[order] = np.arange(len(nodes))
    return [nodes[i] for i in order], rank[real]


def _drop_nodes(nodes: list[Node], real: np.ndarray, drop: list[bool]) -> tuple[list[Node], np.ndarray]:
    """Remove the marked nodes, joining each one's predecessors to its successors."""
    if not any(drop):
        return nodes, real
    succ: dict[int, set[int]] = {i: set() for i in range(len(nodes))}
    pred: dict[int, set[int]] = {i: set() for i in range(len(nodes))}
    for s, d in real.tolist():
        succ[s].add(d)
        pred[d].add(s)
    for v in (i for i, flag in enumerate(drop) if flag):
        for p in pred[v]:
            succ[p].discard(v)
            succ[p] |= succ[v] - {p}
        for d in succ[v]:
            pred[d].discard(v)
            pred[d] |= pred[v] - {d}
    keep = [i for i, flag in enumerate(drop) if not flag]
    new = {old: i for i, old in enumerate(keep)}
    edges = sorted((new[s], new[d]) for s in keep for d in succ[s])
    return [nodes[i] for i in keep], np.array(edges, dtype=np.int64).reshape(-1, 2)


def _reroute_attention_inputs(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """GHN-3's softmax rule: the node after an ``msa`` keeps ``msa`` as its input.

    Another input ``j`` of that node loses its edge when it also reaches the node another way
    (or when ``msa`` does not feed ``j``); a ``j`` with no other way is rewired into ``msa``.
    ``sum``/``concat`` nodes left with one input are then dropped.
    """
    msa = [i for i, n in enumerate(nodes) if n.primitive == "msa"]
    if not msa:
        return nodes, real
    edges = set(map(tuple, real.tolist()))
    pred0: dict[int, list[int]] = {}
    for s, d in edges:
        pred0.setdefault(d, []).append(s)
    rank = _topological_rank(len(nodes), real)
    order = np.argsort(rank).tolist()

    def n_paths(src: int, dst: int, cap: int = 2) -> int:
        """Paths from ``src`` to ``dst`` in the DAG before rewiring, counted up to ``cap``.

        Forward over the nodes between the two in topological order (no other node is on such a
        path), without recursion: a bypass of thousands of nodes costs no stack.
        """
        lo, hi = rank[src], rank[dst]
        if lo >= hi:
            return 0
        count = {src: 1}
        for v in order[lo + 1 : hi + 1]:
            total = sum(count.get(p, 0) for p in pred0.get(v, ()))
            if total:
                count[v] = min(cap, total)
        return count.get(dst, 0)

    for i in msa:
        for out in sorted(d for s, d in edges if s == i):
            for j in sorted(s for s, d in edges if d == out and s != i):
                paths = n_paths(j, out)
                if paths > 1 or (i, j) not in edges:
                    edges.discard((j, out))
                if paths == 1 and (i, j) not in edges:
                    edges.add((j, i))
    real = np.array(sorted(edges), dtype=np.int64).reshape(-1, 2)
    indegree = np.bincount(real[:, 1], minlength=len(nodes))
    drop = [n.primitive in ("sum", "concat") and indegree[k] < 2 for k, n in enumerate(nodes)]
    return _drop_nodes(nodes, real, drop)


def _is_head_pool(i: int, nodes: list[Node], real: np.ndarray) -> bool:
    """Whether node ``i`` is not a global pool, or is the one feeding the classifier head (by name, as GHN-3)."""
    if nodes[i].primitive != "glob_avg":
        return True
    successors = [nodes[d] for d in real[real[:, 0] == i, 1]]
    return any(n.param is not None and n.param.startswith(_HEAD_PREFIXES) for n in successors)


def _pool_before_classifier(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """``... -> W -> b -> glob_avg`` (SqueezeNet's head) becomes ``... -> glob_avg -> W -> b``.

    The three nodes trade places and keep the edges of the places (the pool takes the weight's
    inputs), as the reference GHN-3 does.
    """
    n = len(nodes)
    if n < 4 or nodes[-1].primitive != "glob_avg" or nodes[-2].primitive != "bias" or not _is_param(nodes[-3], 2):
        return nodes, real
    return nodes[:-3] + [nodes[-1], nodes[-3], nodes[-2]], real


def count_parameters(shapes: Iterable[tuple[int, ...]]) -> int:
    """Total number of elements over ``shapes``."""
    return sum(math.prod(s) for s in shapes)
