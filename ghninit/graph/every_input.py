"""Every input of ``forward`` on the traced path, or a warning naming the one that is not.

Without ``example_inputs=``, a model's ``forward`` arguments after the first are fixed to their
defaults for tracing (``mask=None`` must stay ``None``, or a branch on it goes the wrong way). For
a model with two inputs (an image and a text tower, ``forward(image, text=None)``) that leaves the
second tower off the traced path: its parameters would be reported unused. This module looks at
what a trace reached: when parameters are left out, each ``None``-default argument that may be a
tensor is traced as an input too (symbolically as a placeholder, or with a guessed value,
:func:`~ghninit.graph.example_inputs.guess_argument`) and kept when it reaches parameters the
trace did not, losing none. Required arguments of a model traced with an example input are
guessed the same way. Where an argument that may matter cannot be traced, a ``UserWarning``
names it and the parameters left out, and says how to fix it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from typing import Any

import torch.nn as nn
from torch import fx

from .example_inputs import example_input_candidates, guess_argument, normalize_inputs
from .leaf_tracer import _default_arguments
from .trace import (
    EXAMPLE_INPUT,
    SYMBOLIC,
    ExampleTraceError,
    SymbolicTraceError,
    Traced,
    _attributes,
    _restore_attributes,
    trace,
    trace_example,
)

__all__ = ["complete_example", "complete_symbolic", "reached_parameters"]

_MAX_TRIES = 12  # extra traces spent looking for inputs, per model


def reached_parameters(model: nn.Module, graph: fx.Graph) -> set[int]:
    """``id`` of every parameter of ``model`` used by a layer or read on a path to the graph's output."""
    return _reach(model, graph)[0]


def _reach(model: nn.Module, graph: fx.Graph) -> tuple[set[int], set[str]]:
    """Parameters (``id``) used on a path to the output, and the layers with parameters called there."""
    output = [n for n in graph.nodes if n.op == "output"]
    seen: set[fx.Node] = set(output)
    stack = list(output)
    while stack:
        for a in stack.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    ids: set[int] = set()
    layers: set[str] = set()
    for node in seen:
        if node.op not in ("call_module", "get_attr"):
            continue
        obj: Any = model
        try:
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.Module):
            ids.update(id(p) for p in obj.parameters())
            if node.op == "call_module" and any(True for _ in obj.parameters()):
                layers.add(str(node.target))
        elif isinstance(obj, nn.Parameter):
            ids.add(id(obj))
    return ids, layers


def _gains(before: tuple[set[int], set[str]], after: tuple[set[int], set[str]]) -> bool:
    """Whether ``after`` reaches every parameter ``before`` does, and more, through at least one more layer.

    A new input that only reaches a bare parameter (a mask token read when a mask is given) is
    not a tower of its own: the model is traced without it, as its plain call runs.
    """
    return after[0] > before[0] and bool(after[1] - before[1])


def _left_out(model: nn.Module, reached: set[int]) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if id(p) not in reached]


def _unreached_layers(model: nn.Module, reached: set[int]) -> list[tuple[str, nn.Module]]:
    """Layers (``torch.nn`` ones, or modules without sub-modules) owning a parameter no traced input
    reaches, in the model's order. Only those can make a new input worth tracing (:func:`_gains`): a
    bare parameter of a module traced into (a mask token, a class token) is no tower of its own."""
    return [
        (path, m)
        for path, m in model.named_modules()
        if any(p is not None and id(p) not in reached for p in m._parameters.values())
        and (type(m).__module__.startswith("torch.nn") or not any(True for _ in m.children()))
    ]


def _may_be_tensor(model: nn.Module, name: str) -> bool:
    """Whether ``forward``'s argument ``name`` may be a tensor input (not a flag, a number, a cache, or the
    target of a loss: ``labels``, ``target``, which feed no layer)."""
    if "label" in name or "target" in name:
        return False
    try:
        annotation = inspect.signature(model.forward).parameters[name].annotation
    except (KeyError, TypeError, ValueError):  # pragma: no cover
        return False
    if annotation is inspect.Parameter.empty:
        return True
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "Tensor" in text or text in ("Any", "typing.Any")


def _optional_tensor_arguments(model: nn.Module, given: Iterable[str] = ()) -> list[str]:
    """``forward``'s arguments fixed to a default of ``None`` for tracing that may be tensor inputs."""
    skip = set(given)
    return [
        k
        for k, v in (_default_arguments(model) or {}).items()
        if v is None and k not in skip and _may_be_tensor(model, k)
    ]


def complete_symbolic(model: nn.Module, leaf_modules: tuple[type, ...], graph: fx.Graph) -> Traced:
    """Trace ``None``-default arguments as inputs too where that reaches parameters ``graph`` leaves out."""
    reach = _reach(model, graph)
    freed: list[str] = []
    failed: dict[str, str] = {}
    for name in _optional_tensor_arguments(model)[:_MAX_TRIES]:
        if not _unreached_layers(model, reach[0]):
            break
        attributes = _attributes(model)
        try:
            candidate = trace(model, leaf_modules, free=(*freed, name))
        except SymbolicTraceError as err:
            _restore_attributes(attributes)
            failed[name] = f"traced as an input, torch.fx failed: {err.reason}"
            continue
        now = _reach(model, candidate)
        if _gains(reach, now):
            graph, reach = candidate, now
            freed.append(name)
    if failed and _unreached_layers(model, reach[0]):
        example = _example_instead(model, leaf_modules, reach)
        if example is not None:
            return example
    _warn_left_out(model, reach[0], failed)
    if not freed:
        return Traced(graph, SYMBOLIC)
    inputs = [n.target for n in graph.nodes if n.op == "placeholder"]
    described = (
        f"forward's arguments {', '.join(inputs)} as inputs ({', '.join(freed)} instead of its default None: "
        "it reaches parameters the others do not)"
    )
    return Traced(graph, SYMBOLIC, described)


def _example_instead(
    model: nn.Module, leaf_modules: tuple[type, ...], reach: tuple[set[int], set[str]]
) -> Traced | None:
    """The model traced on an inferred example input, with guessed values for the arguments fx could not
    take as inputs, when that reaches more than the symbolic trace did; else ``None``."""
    candidates = example_input_candidates(model)
    if not candidates:
        return None
    inputs, described = candidates[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = complete_example(model, leaf_modules, inputs, described)
        except ExampleTraceError:
            return None
    if not _gains(reach, _reach(model, traced.graph)):
        return None
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=4)
    return traced


def complete_example(model: nn.Module, leaf_modules: tuple[type, ...], inputs: Any, described: str) -> Traced:
    """Trace ``model`` on the inferred ``inputs``, guessing required arguments they lack and ``None``-default
    ones that reach parameters the others leave out.

    Raises:
        ExampleTraceError: when no guess for the required arguments traces.
    """
    named = normalize_inputs(model, inputs)
    notes: dict[str, str] = {}  # argument -> how its value was guessed
    tries = _MAX_TRIES
    params = inspect.signature(model.forward).parameters.values()
    required = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty and p.name not in named
    ]
    first_layers = _first_layer_of_each_kind(model)
    guesses = {name: guess_argument(model, name, first_layers, named) for name in required}
    for name in required:
        rest = {m: guesses[m][0][0] for m in required if m != name and m not in named and guesses[m]}
        for value, how in guesses[name]:
            if tries <= 0:
                break
            tries -= 1
            try:
                trace_example(model, {**named, **rest, name: value}, leaf_modules, inferred=True)
            except ExampleTraceError:
                continue
            named[name], notes[name] = value, how
            break
    missing = [m for m in required if m not in named]
    try:
        graph = trace_example(model, named, leaf_modules, inferred=True)
    except ExampleTraceError as err:
        if missing:
            err.errors.insert(0, f"no value found for forward's required argument(s) {', '.join(missing)}")
        err.described = _describe(named, notes, described)
        raise
    reach = _reach(model, graph)
    failed: dict[str, str] = {}
    for name in _optional_tensor_arguments(model, named):
        layers = _unreached_layers(model, reach[0])
        if not layers or tries <= 0:
            break
        options = guess_argument(model, name, layers, named)
        if not options:
            failed[name] = "no value could be guessed for it"
            continue
        errors = []
        for value, how in options:
            if tries <= 0:
                break
            tries -= 1
            try:
                candidate = trace_example(model, {**named, name: value}, leaf_modules, True, _ways(graph))
            except ExampleTraceError as err:
                errors.append(f"{how}: {err.errors[-1] if err.errors else 'failed'}")
                continue
            errors = []
            now = _reach(model, candidate)
            if _gains(reach, now):
                graph, reach = candidate, now
                named[name], notes[name] = value, how
            break
        if errors:
            failed[name] = "tried " + "; ".join(errors)[:300]
    _warn_left_out(model, reach[0], failed)
    return Traced(graph, EXAMPLE_INPUT, _describe(named, notes, described))


def _ways(graph: fx.Graph) -> list[tuple[bool, bool]]:
    """How to run a trial with one more input: as ``graph`` was traced, then on real tensors in that mode."""
    eval_mode, on_meta = graph._ghninit_way
    return [(eval_mode, True), (eval_mode, False)] if on_meta else [(eval_mode, False)]


def _first_layer_of_each_kind(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    first: dict[type, tuple[str, nn.Module]] = {}
    for path, m in model.named_modules():
        for kind in kinds:
            if isinstance(m, kind) and kind not in first:
                first[kind] = (path, m)
    return sorted(first.values(), key=lambda pm: kinds.index(next(k for k in kinds if isinstance(pm[1], k))))


def _describe(named: dict[str, Any], notes: dict[str, str], described: str) -> str:
    extra = [f"{n}: {notes[n]}" for n in named if n in notes]
    if not extra:
        return described
    return "; ".join([described, *extra]) if described else "; ".join(extra)


def _warn_left_out(model: nn.Module, reached: set[int], failed: dict[str, str]) -> None:
    """Warn when parameters are off the traced path and an argument that may reach them could not be traced."""
    left = _left_out(model, reached)
    if not left or not failed:
        return
    numel = sum(p.numel() for _, p in left)
    names = ", ".join(n for n, _ in left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
    why = "; ".join(f"'{k}' ({v})" for k, v in failed.items())
    warnings.warn(
        f"ghninit: {type(model).__name__}.forward's argument(s) {', '.join(repr(k) for k in failed)} could not "
        f"be traced as inputs and were left at their default None: {why}. {len(left)} parameter tensors "
        f"({numel:,} values) are not on the path from the traced inputs to the output and keep their own "
        f"initialisation unless that argument reaches them: {names}. Fix: pass example_inputs= with every input "
        f"forward takes, e.g. a dict {{{', '.join(repr(k) + ': ...' for k in failed)}, ...}}.",
        UserWarning,
        stacklevel=4,
    )
