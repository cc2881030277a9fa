"""From a model to its fx graph: :func:`trace` (symbolic) and :func:`trace_model`, which chooses the way.

:func:`trace` runs ``forward`` on fx proxies with :class:`~ghninit.graph.leaf_tracer.LeafTracer`
(supported layers stay leaves); no example input is needed. When fx cannot trace a module, the
error names the module, says in plain words what fx could not do (:func:`explain_fx_failure`) and
suggests the fix, in the spirit of ``torchvision.models.feature_extraction``. :func:`trace_model`
tries that first and falls back to tracing with an inferred example input
(:mod:`~ghninit.graph.concrete`), leaving the model as it was; either way
:mod:`~ghninit.graph.every_input` looks for every input of ``forward``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch import fx

from ..errors import TraceError
from .concrete import trace_with_inputs
from .example_inputs import (
    is_torchvision_detector,
    small_detection_inputs,
)
from .leaf_tracer import LeafTracer, _default_arguments, register_leaf_module

__all__ = [
    "EXAMPLE_INPUT", "SYMBOLIC", "LeafTracer", "SymbolicTraceError", "Traced", "explain_fx_failure",
    "register_leaf_module", "trace",
]  # fmt: skip
_MISSING = object()


class SymbolicTraceError(TraceError):
    """torch.fx could not trace a model symbolically; ``reason`` says why in plain words, ``fix`` what to do."""

    def __init__(self, message: str, reason: str, fix: str):
        super().__init__(message)
        self.reason, self.fix = reason, fix


def trace(model: nn.Module, leaf_modules: Iterable[type] = (), free: Iterable[str] = ()) -> fx.Graph:
    """Trace ``model`` into an fx graph without running it.

    Args:
        model: any ``nn.Module``.
        leaf_modules: extra module types not to trace into.
        free: ``forward`` arguments with a default of ``None`` to trace as inputs (placeholders)
            instead of fixing them to their default.

    Raises:
        SymbolicTraceError: naming the module fx could not trace, why, and how to fix it.
    """
    tracer = LeafTracer(leaf_modules)
    fixed = {k: v for k, v in (_default_arguments(model) or {}).items() if k not in set(free)}
    try:
        return tracer.trace(model, concrete_args=fixed or None)
    except Exception as err:
        where = tracer.failed_module
        if where:
            module = model.get_submodule(where)
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            reason = f"in module '{where}' ({kind}), {explain_fx_failure(module, err)}"
            fix = (
                f"keep it as a leaf, e.g. ghninit.initialize(model, ..., leaf_modules=[{kind}]) "
                f"or ghninit.register_leaf_module({kind}); its parameters then keep their own "
                "initialisation unless a rule is registered with ghninit.graph.primitives.register_module."
            )
        else:
            reason = explain_fx_failure(model, err)
            fix = (
                "move data-dependent control flow into a submodule and pass its type in leaf_modules, "
                "or register a rule for it in ghninit.graph.primitives."
            )
        alone = fix if where else f"pass example_inputs= to trace by running the model, or {fix}"
        raise SymbolicTraceError(
            f"torch.fx could not trace {type(model).__name__} symbolically: {reason}\nFix: {alone}", reason, fix
        ) from err


def explain_fx_failure(module: nn.Module, err: BaseException) -> str:
    """What torch.fx could not do in ``module``'s forward, in plain words, with fx's own message last.

    ghninit's own :class:`TraceError` (raised by its tracer, already in plain words with a fix) is
    passed through whole.
    """
    if isinstance(err, TraceError):
        return str(err)
    raw = f"{type(err).__name__}: {err}".strip()
    text = str(err)
    forward = type(module).forward
    code = getattr(forward, "__code__", None)
    variadic = code is not None and bool(code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS))
    if hasattr(forward, "__wrapped__") and variadic:
        wrapper = f"{getattr(code, 'co_qualname', code.co_name)} in {code.co_filename.rpartition('/')[2]}"
        plain = (
            f"its forward is wrapped by a decorator taking (*args, **kwargs) ({wrapper}); fx can only make "
            "inputs for named arguments, so the decorator's code ran on fx's stand-ins instead of the real arguments"
        )
    elif "co_varnames" in text or (variadic and "kwargs" in text):
        plain = "its forward takes *args or **kwargs, which fx cannot turn into inputs"
    elif "cannot be used as inputs to control flow" in text:
        plain = (
            "its forward branches on a value computed from the input (an if/while on a tensor); fx records "
            "operations without running them, so it has no value to branch on"
        )
    elif "cannot be iterated" in text or "has no len" in text or "len(" in text:
        plain = "its forward iterates over, or takes len() of, a value computed from the input, which fx does not run"
    elif "Proxy" in text or "proxy" in text:
        plain = (
            "its forward passes a value computed from the input to code that needs a real tensor or "
            "number (an int(), a shape check, a C++ function); fx has only stand-ins"
        )
    else:
        plain = "its forward failed on fx's stand-in values"
    return f"{plain} (torch.fx: {raw[:300]})"


SYMBOLIC = "symbolic"
EXAMPLE_INPUT = "example input"
logger = logging.getLogger("ghninit")


class Traced(NamedTuple):
    """An fx graph, how it was traced (:data:`SYMBOLIC` or :data:`EXAMPLE_INPUT`), and the inputs it was
    traced with when ghninit chose them (``None`` when they were given or are the model's first argument alone)."""

    graph: fx.Graph
    tracing: str
    inputs: str | None = None


class ExampleTraceError(TraceError):
    """Tracing with an example input failed; ``errors`` has one line per mode tried."""

    def __init__(self, errors: list[str], described: str | None = None):
        super().__init__("\n".join(errors))
        self.errors, self.described = errors, described


def trace_example(
    model: nn.Module,
    example_inputs: Any,
    leaf_modules: tuple[type, ...],
    inferred: bool = False,
    ways: list[tuple[bool, bool]] | None = None,
) -> fx.Graph:
    """The fx graph of ``model`` run on ``example_inputs``, in its mode and then in eval mode, on meta first.

    ``ways`` lists the ``(eval mode, on meta)`` runs to try; by default all that may work. The graph
    remembers the one that worked (``graph._ghninit_way``): trials of more inputs take only that one.

    Raises:
        ExampleTraceError: with one line per mode, when no way works.
    """
    context = small_detection_inputs(model) if inferred else contextlib.nullcontext()
    errors = []
    already_meta = any(p.device.type == "meta" for p in model.parameters())
    # torchvision's detectors want targets in training mode and real numbers for their box selection
    detector = is_torchvision_detector(model)
    if ways is None:
        ways = [
            (eval_mode, on_meta)
            for eval_mode in ((False, True) if model.training and not detector else (True,))
            for on_meta in ((False,) if already_meta or detector else (True, False))  # meta first: no arithmetic
        ]
    with context:
        for i, (eval_mode, on_meta) in enumerate(ways):
            with _state_kept(model):
                if eval_mode:
                    model.eval()
                try:
                    graph = trace_with_inputs(model, example_inputs, leaf_modules, on_meta=on_meta)
                    graph._ghninit_way = (eval_mode, on_meta)  # how it worked, for trials of more inputs
                    return graph
                except Exception as err:  # any failure of the model's own code on the example
                    if not on_meta or i == len(ways) - 1:
                        mode = "eval" if eval_mode else "training"
                        errors.append(f"{mode} mode: {type(err).__name__}: {err}")
    if not inferred:
        raise TraceError(
            f"Tracing {type(model).__name__} with the example input failed:\n  " + "\n  ".join(errors) + "\n"
            "Fix: pass example_inputs= that the model's forward accepts (a tuple of positional arguments, "
            "a dict of keyword arguments or one tensor), or keep the failing module as a leaf with leaf_modules=."
        )
    raise ExampleTraceError(errors)


@contextlib.contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    """Restore what an example run may change: modes, buffers, attributes a forward sets, the CPU RNG."""
    attributes = _attributes(model)
    buffers = [(b, b.clone()) for b in model.buffers() if b.device.type != "meta"]
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            _restore_attributes(attributes)  # e.g. anchors cached as traced values
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _attributes(model: nn.Module) -> list[tuple[nn.Module, dict, dict]]:
    """Each module's attributes, and the contents of its dicts (hooks, sub-layers, parameters)."""
    return [
        (m, dict(vars(m)), {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)}) for m in model.modules()
    ]


def _restore_attributes(attributes: list[tuple[nn.Module, dict, dict]]) -> None:
    """Undo what a (traced) forward set on the modules: new attributes, and hooks a library adds at its first call."""
    for m, saved, contents in attributes:
        for k in [k for k in vars(m) if k not in saved]:
            delattr(m, k)
        vars(m).update(saved)
        for k, items in contents.items():
            now = vars(m)[k]
            if len(now) != len(items) or any(now.get(n, _MISSING) is not v for n, v in items.items()):
                now.clear()
                now.update(items)
