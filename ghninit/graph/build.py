"""Building the GHN graph of a network (:func:`build_graph`); the graph types, algorithms and GHN-3 passes it uses.

:func:`build_graph` walks the fx graph of a model in execution order. Each traced call either
becomes a chain of GHN nodes (through the rules in :mod:`ghninit.graph.primitives`) or is dropped, in
which case its inputs flow on to its consumers. Everything that feeds any of the model's outputs
is kept (a tuple, list, dict, named tuple or dataclass of tensors; auxiliary training outputs,
fields or keys named ``aux*``, are left out as the reference GHNs leave them out). Several outputs
are joined at one ``concat`` sink node, the graph's last; a model with one output gets no sink, so
its graph is what it always was. The resulting node order is topological with ``input`` first, so
a single-output classifier's weight and bias end up last. Virtual edges (GHN-2) join every pair
at shortest-path distance 2..50 (:mod:`~ghninit.graph.algorithms`).

The two GHN families describe some networks differently; :class:`GraphRules` names each difference
as an option, and :data:`GHN2_RULES` / :data:`GHN3_RULES` are the two rule sets (GHN-3: pools over
flattened means kept, squeeze-excitation products as ``cse`` in networks with sigmoid/swish gates,
no edges through ``x.shape``, attention without weights has no ``msa`` node, the final global
pool moved before a 1x1-conv classifier, token positional embeddings predicted; the rewrites are
in :mod:`~ghninit.graph.ghn3_passes`). :class:`Graph`, :class:`Node` and the rules live in
:mod:`~ghninit.graph.structure` and are importable from here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import is_dataclass

import numpy as np
import torch.nn as nn
from torch import fx
from torch.nn.utils import parametrize

from .algorithms import (
    VIRTUAL_EDGE_CUTOFF,
    _drop_nodes,
    _in_topological_order,
    _with_virtual_edges,
    shortest_path_lengths,
)
from .ghn3_passes import (
    _feed_weight_sources,
    _in_generation_order,
    _is_head_pool,
    _pool_before_classifier,
    _pos_enc_before_consumer,
    _reroute_attention_inputs,
)
from .primitives import (
    NORM_PRIMITIVES,
    SOFTMAX_TARGETS,
    NodeSpec,
    class_path,
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
from .structure import GHN2_RULES, GHN3_RULES, Graph, GraphRules, Node, _is_param
from .trace import TraceError
from .trace_model import trace_model

__all__ = [
    "GHN2_RULES", "GHN3_RULES", "VIRTUAL_EDGE_CUTOFF", "Graph", "GraphRules", "Node", "build_graph", "count_parameters",
    "shortest_path_lengths",
]  # fmt: skip


NOT_USED = "not used on the path to the output"


class _Builder:
    """Turns an fx graph into GHN nodes and real edges."""

    def __init__(
        self, model: nn.Module, rules: GraphRules = GHN2_RULES, gated: bool = False, shapes: frozenset = frozenset()
    ):
        self.model = model
        self.shapes = shapes  # fx nodes whose values are shapes or numbers computed from shapes
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
                node = Node(name, spec.primitive, spec.shape, module_path, param, transposed=spec.transposed)
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
            if specs[0].primitive == "sum" and any(a in self.shapes for a in node.all_input_nodes):
                return inputs  # shape arithmetic (``x.size()[:-1] + (n,)``), not a sum of tensors
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

    def reasons(self, needed: Iterable[fx.Node]) -> dict[object, str]:
        """Why each parameter the graph leaves out is left out, for parameters read on the path to the output.

        A parameter read there by a leaf layer without a rule (or a rule that does not describe
        it), or by traced ops none of which has a rule (``x * self.scale``, Hugging Face's
        ``T5LayerNorm``), ran: its reason names the class of the module that owns it. Parameters
        read nowhere on the path get no entry here (:func:`build_graph` says "not used").
        """
        found: dict[object, str] = {}
        for node in needed:
            if node.op == "call_module":
                module = self.modules[node.target]
                described = module_rule(module) is not None or (
                    self.rules.softmax_is_msa and isinstance(module, nn.Softmax)
                )
                why = (
                    f"{'not described by the GHN rule' if described else 'no GHN rule'} for {class_path(type(module))}"
                )
                for name, _ in module.named_parameters(remove_duplicate=False):
                    found.setdefault(self.key(_join(node.target, name)), why)
            elif node.op == "get_attr" and node.target in self.tensors:
                owner = self.modules.get(node.target.rpartition(".")[0], self.model)
                found.setdefault(self.key(node.target), f"no GHN rule for {class_path(type(owner))}")
        return found


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


_SHAPE_ARITHMETIC = (
    operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, operator.neg,
)  # fmt: skip


def _shape_values(graph: fx.Graph) -> frozenset[fx.Node]:
    """The nodes whose values are shapes, or tuples and numbers computed from shapes alone."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        inputs = node.all_input_nodes
        if is_shape_query(node) or (
            node.op == "call_function"
            and node.target in _SHAPE_ARITHMETIC
            and inputs
            and all(a in found for a in inputs)
        ):
            found.add(node)
    return frozenset(found)


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    seen, stack = set(nodes), list(nodes)
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


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
            (see :func:`ghninit.graph.trace_model.trace_model`).
        leaf_modules: extra module types to keep as leaves.
        virtual_edge_cutoff: longest shortest-path turned into a virtual edge (1 disables them).
        rules: :data:`GHN2_RULES` (default) or :data:`GHN3_RULES`.
        example_inputs: trace by running the model on these (a tuple of positional arguments, a
            dict of keyword arguments, or one tensor) instead of symbolically.

    Returns:
        a :class:`Graph`; export with ``graph.to_networkx()``.
    """
    fx_graph, tracing, traced_inputs = trace_model(model, leaf_modules, example_inputs)
    returned = _output_nodes(fx_graph, model)
    needed = _ancestors(returned)
    modules = dict(model.named_modules())
    gated = rules.gated_cse and is_gated_network((n for n in fx_graph.nodes if n in needed), modules)
    builder = _Builder(model, rules, gated, _shape_values(fx_graph))
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
    ends = [nodes[i] for i in frozenset().union(*(outputs[node] for node in returned))]
    last = nodes[-1]
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
        if nodes[-1] is not last and last in ends:  # a pool after the head moved before it: the head ends the graph
            ends = [nodes[-1]]
    head = _output_layer(nodes, real, ends) if n_outputs == 1 else (None, None)
    reasons = builder.reasons(n for n in fx_graph.nodes if n in needed)
    uncovered = {  # every name of a tied parameter, each with the parameter's reason
        name: reasons.get(builder.key(name), NOT_USED)
        for name, p in builder.tensors.items()
        if id(p) not in builder.covered
    }
    for i, node in enumerate(nodes):
        tokens = node.primitive == "pos_enc" and node.shape is not None and len(node.shape) == 3
        if tokens and rules.token_pos_enc:
            side = math.isqrt(node.shape[1])
            node.shape, node.param_shape = (1, node.shape[2], side, side), node.shape
        elif tokens:
            uncovered[node.param] = "token positional embedding: GHN-2 has no decoder for (1, N, C) tensors"
        elif rules.flat_1x1_classifier and i == head[0] and _is_param(node, 4) and max(node.shape[2:]) == 1:
            node.shape, node.param_shape = node.shape[:2], node.shape
    output_classes = None
    if rules.detached_unbiased_linear and n_outputs == 1 and returned[0].op == "call_module":
        layer = modules[returned[0].target]
        if is_detached_linear(layer, returned[0].target, modules):
            output_classes = layer.out_features
            head = None  # a weight source beside the data (GHN-3): the classifier's place is by position
    edges = _with_virtual_edges(len(nodes), real, virtual_edge_cutoff)
    return Graph(
        nodes,
        edges,
        uncovered,
        rules,
        n_outputs=n_outputs,
        tracing=tracing,
        output_classes=output_classes,
        head=head,
        inputs=traced_inputs,
    )


def _output_layer(nodes: list[Node], real: np.ndarray, ends: list[Node]) -> tuple[int | None, int | None]:
    """The classifier: ``(weight, bias)`` indices of the layer that produces the output, or ``(None, None)``.

    The output must end at that one layer: its bias node, fed by its weight alone, or its weight
    node when it has no bias node (a bias-free layer, or a bias added as a plain tensor). An output
    that ends elsewhere (a sum of two layers, a norm, an op) has no classifier: every layer in
    it is predicted as a layer.
    """
    if len(ends) != 1:
        return None, None
    index = {id(node): i for i, node in enumerate(nodes)}
    if id(ends[0]) not in index:  # the output's last node was dropped (GHN-3: a pool not feeding a head)
        return None, None
    end = index[id(ends[0])]
    if nodes[end].primitive == "bias":
        feeding = real[real[:, 1] == end, 0]
        if len(feeding) == 1 and _is_param(nodes[int(feeding[0])], 2):
            return int(feeding[0]), end
        return None, None
    if nodes[end].primitive in ("conv", "sep_conv", "dil_conv") and _is_param(nodes[end], 2):
        return end, None
    return None, None


def count_parameters(shapes: Iterable[tuple[int, ...]]) -> int:
    """Total number of elements over ``shapes``."""
    return sum(math.prod(s) for s in shapes)
