"""From a model to its fx graph: :func:`trace` (symbolic) and :func:`trace_model`, which chooses the way.

:func:`trace` runs ``forward`` on fx proxies with :class:`~ghninit.graph.leaf_tracer.LeafTracer`
(supported layers stay leaves); no example input is needed. When fx cannot trace a module, the
error names the module and suggests the fix, in the spirit of
``torchvision.models.feature_extraction``. :func:`trace_model` tries that first and falls back to
tracing with an example input (:mod:`~ghninit.graph.concrete`), leaving the model as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import fx

from ..errors import TraceError
from .concrete import trace_with_inputs
from .example_inputs import infer_example_inputs, is_torchvision_detector, normalize_inputs, small_detection_inputs
from .leaf_tracer import LeafTracer, _default_arguments, register_leaf_module
from .patches import tracing

__all__ = ["EXAMPLE_INPUT", "SYMBOLIC", "LeafTracer", "register_leaf_module", "trace", "trace_model"]
_MISSING = object()


def trace(model: nn.Module, leaf_modules: Iterable[type] = ()) -> fx.Graph:
    """Trace ``model`` into an fx graph without running it.

    Args:
        model: any ``nn.Module``.
        leaf_modules: extra module types not to trace into.

    Raises:
        TraceError: naming the module fx could not trace and how to fix it.
    """
    tracer = LeafTracer(leaf_modules)
    try:
        return tracer.trace(model, concrete_args=_default_arguments(model))
    except Exception as err:
        where = tracer.failed_module
        if where:
            module = model.get_submodule(where)
            kind = f"{type(module).__module__}.{type(module).__qualname__}"
            raise TraceError(
                f"torch.fx could not trace module '{where}' ({kind}): {err}\n"
                f"Fix: keep it as a leaf, e.g. ghninit.initialize(model, ..., leaf_modules=[{kind}]) "
                f"or ghninit.register_leaf_module({kind}); its parameters then keep their own "
                "initialisation unless a rule is registered with ghninit.graph.primitives.register_module."
            ) from err
        raise TraceError(
            f"torch.fx could not trace the forward of {type(model).__name__}: {err}\n"
            "Fix: move data-dependent control flow into a submodule and pass its type in "
            "leaf_modules, or register a rule for it in ghninit.graph.primitives."
        ) from err


SYMBOLIC = "symbolic"
EXAMPLE_INPUT = "example input"


def trace_model(
    model: nn.Module, leaf_modules: Iterable[type] = (), example_inputs: Any = None
) -> tuple[fx.Graph, str]:
    """The fx graph of ``model`` and how it was obtained (:data:`SYMBOLIC` or :data:`EXAMPLE_INPUT`).

    Without ``example_inputs``, symbolic tracing first; when it fails, tracing with an inferred
    example input (:func:`~ghninit.graph.example_inputs.infer_example_inputs`). With
    ``example_inputs``, tracing with them. The example run happens in the model's mode, then in
    eval mode if that fails (a detector in training mode wants targets); the model's modes,
    buffers (BatchNorm statistics) and the random number generators are left as they were.

    Raises:
        TraceError: when neither way works, with both reasons and how to fix it.
    """
    with tracing():  # one trace at a time; the model's state is put back before another thread may trace it
        return _trace_model(model, tuple(leaf_modules), example_inputs)


def _trace_model(model: nn.Module, leaf_modules: tuple[type, ...], example_inputs: Any) -> tuple[fx.Graph, str]:
    symbolic_error: TraceError | None = None
    inferred = example_inputs is None
    if inferred:
        attributes = _attributes(model)
        try:
            return trace(model, leaf_modules), SYMBOLIC
        except TraceError as err:
            symbolic_error = err
            _restore_attributes(attributes)  # a failed trace may have cached proxies on modules
        try:
            example_inputs = infer_example_inputs(model)
        except TraceError as err:
            raise TraceError(f"{symbolic_error}\nTracing with an example input instead: {err}") from symbolic_error
    normalize_inputs(model, example_inputs)  # wrong names or counts: a TypeError now, not after two runs
    context = small_detection_inputs(model) if inferred else contextlib.nullcontext()
    errors = []
    already_meta = any(p.device.type == "meta" for p in model.parameters())
    # torchvision's detectors want targets in training mode and real numbers for their box selection
    detector = is_torchvision_detector(model)
    with context:
        for eval_mode in (False, True) if model.training and not detector else (True,):
            for on_meta in (False,) if already_meta or detector else (True, False):  # meta first: no arithmetic
                with _state_kept(model):
                    if eval_mode:
                        model.eval()
                    try:
                        graph = trace_with_inputs(model, example_inputs, leaf_modules, on_meta=on_meta)
                        return graph, EXAMPLE_INPUT
                    except Exception as err:  # any failure of the model's own code on the example
                        if not on_meta:
                            mode = "eval" if eval_mode else "training"
                            errors.append(f"{mode} mode: {type(err).__name__}: {err}")
    reasons = "\n  ".join(errors)
    before = f"{symbolic_error}\n" if symbolic_error else ""
    raise TraceError(
        f"{before}Tracing {type(model).__name__} with an example input failed too:\n  {reasons}\n"
        "Fix: pass example_inputs= that the model's forward accepts (a tuple of positional arguments, "
        "a dict of keyword arguments or one tensor), or keep the failing module as a leaf with leaf_modules=."
    )


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
