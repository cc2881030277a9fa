"""Code the tracers used to stop at: modules made in ``forward``, ``x.ndim``, TorchScript functions.

A parameter-free module that is not one of the model's (``nn.ReLU()(x)`` in a ``forward``) is traced
through as the function calls it makes, giving the GHN graph its submodule twin gives; one with
parameters is a clear error naming it. ``x.ndim`` on the example-input path is a real ``int`` tied to
its fx node (a dict key, a list length), as ``x.shape[0]`` is. A ``@torch.jit.script`` function
called on traced values is recorded as one op on both paths; a scripted submodule is a leaf.
"""

from __future__ import annotations

import operator
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import LOCAL_FIXTURES

import ghninit
from ghninit.errors import TraceError
from ghninit.graph import patches
from ghninit.graph.build import GHN2_RULES, GHN3_RULES, build_graph
from ghninit.graph.concrete import trace_with_inputs
from ghninit.graph.trace import trace
from ghninit.graph.trace_model import trace_model
from ghninit.graph.traced_numbers import TracedInt

GHN_FILE = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"

with warnings.catch_warnings():  # torch.jit.script is deprecated in recent PyTorch, still used by libraries
    warnings.simplefilter("ignore", FutureWarning)

    @torch.jit.script
    def _scaled(x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0

    @torch.jit.script
    def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[1] // 2
        return x[:, :n], x[:, n:]


def _structure(graph) -> tuple[list, np.ndarray]:
    """What the GHN sees: primitives and shapes in order, and the edges (module names aside)."""
    return [(n.primitive, n.shape, n.param_shape) for n in graph.nodes], graph.edges


# ---------------------------------------------------------------------------------------------
# Row 2: modules made inside forward


class _Doubler(nn.Module):
    """A parameter-free module of the model's own code, built at every call."""

    def forward(self, x):
        return x * 2


class _Inline(nn.Module):
    """``nn.ReLU()``, ``nn.Dropout``, a parameter-free module of its own and a ``Sequential`` of one of its
    layers created in ``forward``."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = nn.Sequential(self.fc1, nn.ReLU())(x)  # holds one of the model's layers
        h = nn.Dropout(0.1)(h)
        return self.fc2(_Doubler()(nn.Sequential(nn.GELU(), nn.Identity())(h)))


class _Installed(nn.Module):
    """:class:`_Inline` with the same layers as submodules, written as the functions they call."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = nn.functional.dropout(nn.functional.relu(self.fc1(x)), 0.1, self.training)
        return self.fc2(nn.functional.gelu(h) * 2)


class _LinearInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(8, 8))
        self.head = _MakesALinear()

    def forward(self, x):
        return self.head(self.block(x))


class _MakesALinear(nn.Module):
    def forward(self, x):
        return nn.Linear(8, 4)(x)


@pytest.mark.parametrize("rules", [GHN2_RULES, GHN3_RULES], ids=["ghn2", "ghn3"])
def test_modules_made_in_forward_trace_as_their_function_calls_on_both_paths(rules):
    torch.manual_seed(0)
    inline, installed = _Inline(), _Installed()
    x = torch.randn(2, 8)
    reference = build_graph(installed, rules=rules)
    for example in (None, x):
        graph = build_graph(inline, rules=rules, example_inputs=example)
        assert graph.tracing == ("symbolic" if example is None else "example input")
        ref_nodes, ref_edges = _structure(reference)
        nodes, edges = _structure(graph)
        assert nodes == ref_nodes
        assert np.array_equal(edges, ref_edges)
        assert not graph.uncovered  # both linears on the path to the output
    # only the model's own layers are module calls; fc1 is one though a Sequential made in forward calls it
    assert [n.target for n in trace(inline).nodes if n.op == "call_module"] == ["fc1", "fc2"]


class _Offset(nn.Module):
    """Parameter-free, with a buffer: made per call, its buffer is a constant of the trace."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("table", torch.arange(n).float())

    def forward(self, x):
        return x + self.table


class _BufferInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(_Offset(8)(self.fc1(x)))


def test_a_module_with_a_buffer_made_in_forward_leaves_the_model_as_it_was():
    for example in (None, torch.randn(2, 8)):
        model = _BufferInForward()
        before = dict(vars(model))
        graph = build_graph(model, example_inputs=example)
        assert not graph.uncovered and [n.module for n in graph.nodes if n.param] == ["fc1", "fc1", "fc2", "fc2"]
        assert vars(model).keys() == before.keys()  # fx's _tensor_constant0 is not left on the model


def test_a_module_with_parameters_made_in_forward_is_an_error_naming_it():
    model = _LinearInForward()
    for example in (None, torch.randn(2, 8)):
        with pytest.raises(TraceError) as err:
            trace_model(model, example_inputs=example)
        message = str(err.value)
        assert "torch.nn.modules.linear.Linear (with 36 parameters not in the model)" in message
        assert "module 'head'" in message and "not a submodule of the model" in message
        assert "create it in __init__" in message
        assert "NameError" not in message
    for cls, original in patches.ORIGINAL_SCRIPT_CALL.items():  # a failed trace puts TorchScript's __call__ back
        assert cls.__dict__["__call__"] is original


def test_tiny_distilbert_classifier_and_llama_initialise():
    transformers = pytest.importorskip("transformers")
    ghn = ghninit.load_ghn(str(GHN_FILE))
    distilbert = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=3
        )
    )  # its classification head calls nn.ReLU()(pooled_output)
    llama = transformers.LlamaModel(
        transformers.LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
        )
    )  # with `kernels` installed, its attention calls rotary embeddings through a module held in a dict
    ids = torch.randint(0, 100, (1, 8))
    reports = {}
    for name, model in (("distilbert", distilbert), ("llama", llama)):
        reports[name] = report = ghninit.initialize(model, ghn=ghn, example_inputs={"input_ids": ids})
        assert report.tracing == "example input"
        assert report.n_params_predicted / report.n_params_total > 0.5
        assert all(torch.isfinite(p).all() for p in model.parameters())
    # the layers before and after the ReLU made in forward are on the path to the output
    assert "pre_classifier.weight" in reports["distilbert"].predicted


# ---------------------------------------------------------------------------------------------
# Row 4: x.ndim on the example-input path


class _RankDispatch(nn.Module):
    """Picks its layer by ``x.ndim`` in a dict and shapes a bias with ``[1] * (x.ndim - 2)``."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 8)
        self.bias = nn.Parameter(torch.zeros(8))
        self.seen: list = []

    def forward(self, x):
        self.seen.append((x.ndim, x.dim()))
        layer = {4: self.conv, 2: self.fc}[x.ndim]
        h = layer(x)
        h = h + self.bias.view([1, -1] + [1] * (h.ndim - 2))
        if h.ndim > 2:  # value-dependent: symbolic tracing cannot follow it
            h = h.mean(dim=tuple(range(2, h.ndim)))
        return self.fc(h)


def test_ndim_is_a_traced_int_on_the_example_input_path():
    model = _RankDispatch()
    graph = trace_with_inputs(model, torch.randn(1, 3, 12, 12))
    ((ndim, dim),) = model.seen
    assert type(ndim) is TracedInt and ndim == 4 and type(dim) is TracedInt and dim == 4
    assert ndim.node.target is getattr and ndim.node.args[1] == "ndim"
    calls = [n.target for n in graph.nodes if n.op == "call_module"]
    assert calls == ["conv", "fc"]
    # arithmetic on it is recorded from its node, as on x.shape[0]
    reads = [n for n in graph.nodes if n.target is getattr and n.args[1] == "ndim"]
    assert reads and any(u.target is operator.sub for n in reads for u in n.users)


class _FlattenByRank(nn.Module):
    """Reads ``x.ndim`` as a value symbolic tracing records too."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.flatten(1, h.ndim - 1))


@pytest.mark.parametrize("rules", [GHN2_RULES, GHN3_RULES], ids=["ghn2", "ghn3"])
def test_ndim_gives_the_same_graph_on_both_paths(rules):
    model = _FlattenByRank()
    symbolic = trace(model)
    example = trace_with_inputs(model, torch.randn(1, 3, 6, 6))
    describe = lambda g: [(n.op, str(n.target), str(n.args)) for n in g.nodes]  # noqa: E731
    assert describe(symbolic) == describe(example)
    a = build_graph(model, rules=rules)
    b = build_graph(model, rules=rules, example_inputs=torch.randn(1, 3, 6, 6))
    assert _structure(a)[0] == _structure(b)[0] and np.array_equal(a.edges, b.edges)


class _RankFrom(nn.Module):
    """Flattens one branch at a position read from the other's rank, by ``ndim`` or by ``dim()``."""

    def __init__(self, by_attribute: bool):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.by_attribute = by_attribute

    def forward(self, x):
        h = self.fc1(x)
        rank = h.ndim if self.by_attribute else h.dim()
        g = self.fc2(x).view(2, 2, 4)
        return self.fc3(g.flatten(rank - 1)) + h


@pytest.mark.parametrize("rules", [GHN2_RULES, GHN3_RULES], ids=["ghn2", "ghn3"])
def test_ndim_is_a_shape_read_like_dim(rules):
    x = torch.randn(2, 8)
    for example in (None, x):
        a = build_graph(_RankFrom(True), rules=rules, example_inputs=example)
        b = build_graph(_RankFrom(False), rules=rules, example_inputs=example)
        assert _structure(a)[0] == _structure(b)[0] and np.array_equal(a.edges, b.edges)


def test_einops_rearrange_layer_traces_with_an_example_input():
    einops_torch = pytest.importorskip("einops.layers.torch")

    class PatchTokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 4, stride=4)
            self.tokens = einops_torch.Rearrange("b c h w -> b (h w) c")  # dispatches on the input's ndim
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.tokens(self.conv(x)))

    graph = build_graph(PatchTokens(), example_inputs=torch.randn(1, 3, 16, 16))
    assert graph.tracing == "example input" and not graph.uncovered


# ---------------------------------------------------------------------------------------------
# Row 5: TorchScript


class _CallsScript(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(4, 10)

    def forward(self, x):
        a, b = _halves(_scaled(self.fc1(x)))
        return self.fc2(a + b)


class _ValueDependentScript(_CallsScript):
    def forward(self, x):
        a, b = _halves(_scaled(self.fc1(x)))
        if a.abs().sum() >= 0:  # a value: the example-input path only
            a = a + b
        return self.fc2(a)


def test_script_functions_are_recorded_as_ops_on_both_paths():
    model = _CallsScript()
    symbolic = trace(model)
    example = trace_with_inputs(model, torch.randn(2, 8))

    def describe(g):
        return [(n.op, n.name, n.target if n.op != "call_function" else id(n.target)) for n in g.nodes]

    assert describe(symbolic) == describe(example)
    scripted = [n for n in symbolic.nodes if isinstance(n.target, torch.jit.ScriptFunction)]
    assert [n.target for n in scripted] == [_scaled, _halves] and [n.name for n in scripted] == ["_scaled", "_halves"]
    graph = build_graph(_ValueDependentScript(), example_inputs=torch.randn(2, 8))
    assert graph.tracing == "example input" and not graph.uncovered  # fc2 is after the scripted calls
    assert torch._C.ScriptFunction.__dict__["__call__"] is patches.ORIGINAL_SCRIPT_CALL[torch._C.ScriptFunction]


class _ScriptedBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.fc(x))


class _HasScriptedModule(nn.Module):
    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.block = torch.jit.script(_ScriptedBlock())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.block(x))


def test_a_scripted_submodule_is_a_leaf_reported_as_kept():
    model = _HasScriptedModule()
    weight = model.block.fc.weight.detach().clone()
    for example in (None, torch.randn(2, 8)):
        graph = build_graph(model, example_inputs=example)
        assert [n.module for n in graph.nodes if n.param] == ["head", "head"]
        assert set(graph.uncovered) == {"block.fc.weight", "block.fc.bias"}
        # the reason is that it has no rule (it ran), not that it is off the path to the output
        assert all(why == "no GHN rule for torch.jit._script.RecursiveScriptModule" for why in graph.uncovered.values())
    assert [n.target for n in trace(model).nodes if n.op == "call_module"] == ["block", "head"]
    # the meta run did not leave meta tensors in the C++ module (its stores write through)
    assert model.block.fc.weight.device.type == "cpu" and torch.equal(model.block.fc.weight, weight)
    assert model(torch.randn(2, 8)).shape == (2, 10)


def test_script_functions_in_another_thread_during_a_trace_run_as_usual():
    started, release, results = threading.Event(), threading.Event(), []

    class Pauses(_CallsScript):
        def forward(self, x):
            started.set()
            release.wait(10)
            return super().forward(x)

    def bystander():
        started.wait(10)
        results.append(_scaled(torch.ones(2)))  # the patched __call__ answers as the original here
        release.set()

    thread = threading.Thread(target=bystander)
    thread.start()
    trace(Pauses())
    thread.join()
    assert torch.equal(results[0], torch.full((2,), 3.0))
