"""Example-input tracing on ``meta``: op outputs cached by input shapes give the same graph, faster,
and never skip an op whose result could depend on more than shapes."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

import ghninit.graph.concrete as concrete
from ghninit.graph.concrete import trace_with_inputs


def _nodes(graph) -> list[tuple]:
    return [(n.op, str(n.target), str(n.args)) for n in graph.nodes]


def test_meta_trace_equals_the_symbolic_graph_and_runs_each_signature_once(monkeypatch):
    model = torchvision.models.resnet50()
    x = torch.randn(1, 3, 224, 224)
    batch_norm_runs = []
    original = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward", lambda self, t: batch_norm_runs.append(1) or original(self, t))
    graph = trace_with_inputs(model, x, on_meta=True)
    runs_cached = len(batch_norm_runs)
    with monkeypatch.context() as patch:
        patch.setattr(concrete, "_meta_key", lambda *args: None)
        uncached = trace_with_inputs(model, x, on_meta=True)
    assert _nodes(graph) == _nodes(uncached)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert (
        n_bn == 53 and 0 < runs_cached < 20 and len(batch_norm_runs) == runs_cached + 53
    )  # one run per distinct (features, input shape)


CALLS: list = []


def _recording(t: torch.Tensor) -> torch.Tensor:
    """A function with a side effect, not a torch op: it must run at every call."""
    CALLS.append(tuple(t.shape))
    return t * 2


torch.fx.wrap("_recording")


class _TwoCalls(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        y = _recording(self.a(x))
        z = _recording(self.b(x))  # the same shapes as the call before
        z.add_(y)
        return z.unsqueeze_(0)


def test_in_place_ops_and_user_functions_are_not_cached():
    key, net, meta = concrete._meta_key, _TwoCalls(), torch.empty(2, 4, device="meta")
    assert key("call_function", _recording, (meta,), {}, net) is None
    assert key("call_method", "add_", (meta, meta), {}, net) is None
    assert key("call_function", torch.add, (meta, meta), {"out": meta}, net) is None
    assert key("call_function", torch.add, (meta, torch.ones(2, 4)), {}, net) is None  # a real value
    assert key("call_function", torch.add, (meta, meta), {}, net) == key(
        "call_function", torch.add, (meta, meta), {}, net
    )
    assert key("call_module", "a", (meta,), {}, net) == key("call_module", "b", (meta,), {}, net)  # same config
    CALLS.clear()
    graph = trace_with_inputs(net, torch.randn(2, 4), on_meta=True)
    assert CALLS == [(2, 4), (2, 4)]
    assert [n.target for n in graph.nodes if n.op == "call_method"] == ["add_", "unsqueeze_"]
