"""Choosing how to trace a model: symbolically, else with an inferred example input, every input sought.

:func:`trace_model` is what :func:`~ghninit.graph.build.build_graph` calls. It tries symbolic
tracing (:func:`~ghninit.graph.trace.trace`) first, then each example input
:func:`~ghninit.graph.example_inputs.example_input_candidates` proposes
(:func:`~ghninit.graph.trace.trace_example`), and lets :mod:`~ghninit.graph.every_input` trace the
arguments of ``forward`` the first input leaves out. Apart from :mod:`~ghninit.graph.trace` so that
the input search, which traces, does not import its own caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from ..errors import TraceError
from . import every_input
from .example_inputs import cannot_guess_message, example_input_candidates, normalize_inputs
from .patches import tracing
from .trace import (
    EXAMPLE_INPUT,
    ExampleTraceError,
    SymbolicTraceError,
    Traced,
    _attributes,
    _restore_attributes,
    logger,
    trace,
    trace_example,
)

__all__ = ["trace_model"]


def trace_model(model: nn.Module, leaf_modules: Iterable[type] = (), example_inputs: Any = None) -> Traced:
    """The fx graph of ``model``, how it was obtained and, when inferred, what it was traced with.

    Without ``example_inputs``, symbolic tracing first; when it fails, tracing with an inferred
    example input (:func:`~ghninit.graph.example_inputs.example_input_candidates`, the first the
    model accepts). Either way every input of ``forward`` is sought
    (:mod:`~ghninit.graph.every_input`): a ``None``-default argument that reaches parameters the
    others leave out is traced as an input too, a required one is guessed, and one that cannot be
    is named in a warning with the parameters left out. With ``example_inputs``, tracing with
    them. The example run happens in the model's mode, then in eval mode if that fails (a detector
    in training mode wants targets); the model's modes, buffers (BatchNorm statistics) and the
    random number generators are left as they were.

    Raises:
        TraceError: when neither way works, with both reasons (fx's in plain words), what was
            tried, and how to fix it.
    """
    with tracing():  # one trace at a time; the model's state is put back before another thread may trace it
        return _trace_model(model, tuple(leaf_modules), example_inputs)


def _trace_model(model: nn.Module, leaf_modules: tuple[type, ...], example_inputs: Any) -> Traced:
    if example_inputs is not None:
        normalize_inputs(model, example_inputs)  # wrong names or counts: a TypeError now, not after two runs
        return Traced(trace_example(model, example_inputs, leaf_modules), EXAMPLE_INPUT)
    attributes = _attributes(model)
    try:
        graph = trace(model, leaf_modules)
    except SymbolicTraceError as err:
        symbolic_error = err
        _restore_attributes(attributes)  # a failed trace may have cached proxies on modules
    else:
        return every_input.complete_symbolic(model, leaf_modules, graph)
    candidates = example_input_candidates(model)
    name = type(model).__name__
    head = f"torch.fx could not trace {name} symbolically: {symbolic_error.reason}\nNext, tracing with an example input"
    if not candidates:
        raise TraceError(f"{head}: none could be inferred. {cannot_guess_message(model)}") from symbolic_error
    tried = []
    for inputs, described in candidates:
        try:
            traced = every_input.complete_example(model, leaf_modules, inputs, described)
        except ExampleTraceError as err:
            tried.append(f"{err.described or described}:\n    " + "\n    ".join(err.errors))
            continue
        logger.info("%s; traced with an example input instead: %s", head.replace("\nNext, ", " "), traced.inputs)
        return traced
    reasons = "\n  ".join(tried)
    raise TraceError(
        f"{head} inferred from the model. Tracing {name} with an example input failed too, on each one tried:\n"
        f"  {reasons}\n"
        "Fix: pass example_inputs= that the model's forward accepts (a tuple of positional arguments, "
        f"a dict of keyword arguments or one tensor); or {symbolic_error.fix}"
    ) from symbolic_error
