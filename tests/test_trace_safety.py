"""Tracing inside processes that do other work: threads, a bystander thread, failed traces, fork.

Several threads initialising models through the example-input path get what sequential calls
get; a thread running other modules, ``isinstance`` and torch factories during a trace sees the
answers it sees without one; a failed trace leaves every global as it found it; a child forked
while a trace runs starts clean and can run and trace models.
"""

from __future__ import annotations

import builtins
import multiprocessing
import threading

import pytest
import torch
import torch.nn as nn
from conftest import LOCAL_FIXTURES

import ghninit
from ghninit.errors import TraceError
from ghninit.graph import patches
from ghninit.graph.build import build_graph

GHN_FILE = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"


def _tiny_vit(seed: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        num_labels=10,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.ViTForImageClassification(config)


class _ValueBranch(nn.Module):
    """Control flow on a value (symbolic tracing cannot follow it); ``pause`` runs in the example run."""

    def __init__(self, pause=None):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 10)
        self.pause = pause

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > -1e9:  # a value: needs the example input
            h = torch.relu(h)
        if self.pause is not None:
            self.pause()
        return self.fc2(h)


def _globals() -> dict:
    return {
        "isinstance": builtins.isinstance,
        **{name: getattr(torch, name) for name in (*patches.CONSTRUCTORS, *patches.ON_VALUES)},
        **{name: nn.Module.__dict__.get(name) for name in ("__call__", "__getattr__")},
    }


def _bystander_answers(net: nn.Module, x: torch.Tensor) -> tuple:
    """What a thread unrelated to the trace computes: module calls, attribute reads, isinstance, factories."""
    return (
        net(x).sum().item(),
        type(net[0].weight).__name__,
        isinstance(x, torch.Tensor),
        isinstance([1], list),
        isinstance(torch.finfo(torch.float16), torch.finfo),
        torch.finfo(torch.float16).max,
        torch.iinfo(torch.int8).min,
        torch.zeros(2, 3).shape,
        torch.tensor([1, 2]).tolist(),
        torch.arange(4).sum().item(),
        torch.full((2,), 7.0).tolist(),
    )


def test_threads_initialising_at_once_match_sequential_calls_and_a_bystander_sees_no_difference():
    ghn = ghninit.load_ghn(GHN_FILE)
    seeds = (0, 1, 2)
    expected = {}
    for seed in seeds:
        model = _tiny_vit(seed)
        report = ghninit.initialize(model, ghn=ghn)
        expected[seed] = (report.tracing, sorted(report.predicted), model.state_dict())
    assert all(e[0] == "example input" for e in expected.values())

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    x = torch.randn(3, 4)
    plain = _bystander_answers(net, x)
    before = _globals()
    stop, differences, rounds = threading.Event(), [], [0]

    def bystander():
        while not stop.is_set():
            try:
                answers = _bystander_answers(net, x)
            except Exception as err:  # the failure this test is about: record it, fail below
                differences.append(repr(err))
                return
            if answers != plain:
                differences.append(answers)
            rounds[0] += 1

    got, failures = {}, []

    models = {seed: _tiny_vit(seed) for seed in seeds}  # made here: the global RNG is shared by the threads

    def work(seed):
        try:
            model = models[seed]
            report = ghninit.initialize(model, ghn=ghn)
            got[seed] = (report.tracing, sorted(report.predicted), model.state_dict())
        except Exception as err:
            failures.append(f"seed {seed}: {err!r}")

    watcher = threading.Thread(target=bystander)
    watcher.start()
    workers = [threading.Thread(target=work, args=(seed,)) for seed in seeds]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    stop.set()
    watcher.join(timeout=60)
    assert not failures
    assert not differences and rounds[0] > 0
    for seed in seeds:
        assert got[seed][:2] == expected[seed][:2]
        for name, tensor in expected[seed][2].items():
            assert torch.equal(got[seed][2][name], tensor), (seed, name)
    assert _globals() == before


def test_a_failed_trace_leaves_every_global_and_the_class_as_they_were():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            if x.sum() > 0:  # needs a value, so the example-input path runs too
                x = x + 1
            raise ValueError("broken on purpose")

    before, model = _globals(), Broken()
    with pytest.raises(TraceError, match="broken on purpose"):
        build_graph(model, example_inputs=torch.randn(2, 8))
    assert _globals() == before
    assert type(model) is Broken and "forward" in vars(Broken)
    assert patches._owner is None and patches._depth == 0


def test_a_decorated_forward_is_replaced_on_the_traced_instance_only():
    import functools

    def passthrough(fn):  # as Hugging Face's can_return_tuple: (self, *args, **kwargs)
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            return fn(self, *args, **kwargs)

        return wrapper

    seen = {}

    class Decorated(_ValueBranch):
        @passthrough
        def forward(self, x):
            seen["class forward"] = vars(Decorated)["forward"]
            seen["other type"] = type(other)
            return super().forward(x)

    original = vars(Decorated)["forward"]
    model, other = Decorated(), Decorated()
    graph = build_graph(model, example_inputs=torch.randn(2, 8))
    assert graph.tracing == "example input"
    assert seen["class forward"] is original and seen["other type"] is Decorated
    assert type(model) is Decorated and vars(Decorated)["forward"] is original


def _child(conn) -> None:
    """In a child forked mid-trace: the originals are back, and it can run and trace a model."""
    try:
        clean = builtins.isinstance is patches.ORIGINAL_ISINSTANCE and all(
            getattr(torch, k) is v for k, v in patches.ORIGINAL_TORCH.items()
        )
        clean = clean and all(nn.Module.__dict__[k] is v for k, v in patches.ORIGINAL_MODULE.items())
        out = nn.Linear(8, 2)(torch.randn(3, 8)).shape
        graph = build_graph(_ValueBranch(), example_inputs=torch.randn(2, 8))
        conn.send((clean, tuple(out), graph.tracing, len(graph)))
    except Exception as err:  # pragma: no cover - reported to the parent
        conn.send(repr(err))
    finally:
        conn.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_child_forked_during_a_trace_can_run_and_trace_models():
    inside, resume = threading.Event(), threading.Event()

    def pause():
        if not resume.is_set():
            inside.set()
            resume.wait(timeout=60)

    result = {}

    def trace_in_thread():
        result["graph"] = build_graph(_ValueBranch(pause), example_inputs=torch.randn(2, 8))

    tracer = threading.Thread(target=trace_in_thread)
    tracer.start()
    try:
        assert inside.wait(timeout=60)  # the trace is running, with its patches installed
        assert builtins.isinstance is not patches.ORIGINAL_ISINSTANCE
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(send,))
        child.start()
        send.close()
        assert receive.poll(timeout=120), "the forked child did not answer"
        answer = receive.recv()
        child.join(timeout=30)
    finally:
        resume.set()
        tracer.join(timeout=60)
    assert answer == (True, (3, 2), "example input", len(build_graph(_ValueBranch(), example_inputs=torch.randn(2, 8))))
    assert child.exitcode == 0
    assert result["graph"].tracing == "example input"
    assert builtins.isinstance is patches.ORIGINAL_ISINSTANCE


def test_a_trace_inside_a_trace_keeps_the_outer_ones_patches():
    inner, seen = [], []

    class Nested(_ValueBranch):
        def forward(self, x):
            inner.append(len(build_graph(_ValueBranch(), example_inputs=torch.randn(2, 8))))
            seen.append((type(x).__name__, builtins.isinstance is patches.ORIGINAL_ISINSTANCE))
            return super().forward(x)

    before = _globals()
    graph = build_graph(Nested(), example_inputs=torch.randn(2, 8))
    plain = build_graph(_ValueBranch(), example_inputs=torch.randn(2, 8))
    assert graph.tracing == "example input" and len(graph) == len(plain)
    assert inner and set(inner) == {len(plain)}
    assert ("ConcreteProxy", False) in seen and ("ConcreteProxy", True) not in seen
    assert _globals() == before
