"""Tracing with an example input: the same fx graph as symbolic tracing, for models fx alone cannot follow.

:class:`ConcreteTracer` is :class:`~ghninit.graph.leaf_tracer.LeafTracer` whose proxies
(:mod:`~ghninit.graph.proxies`) also carry the value the op returns on the example input: every
recorded op (and every leaf module) is run on those values as it is recorded. Where symbolic
tracing stops (``bool()`` of a traced value, ``len``, iteration, ``int()``,
``isinstance(x, torch.Tensor)``) the tracer answers with the value instead and records nothing, so
the control flow that depends on values (detectors' box selection, shape checks on the input)
follows the example. Everything symbolic tracing records is recorded the same way, by the same
leaf decisions, so for a model both can trace the fx graph, and so the GHN graph, is the same.
Values may live on the ``meta`` device (no memory); ops that need real numbers then fail.
:func:`~ghninit.graph.trace_model.trace_model` chooses between the two ways (it moved there from this module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_flatten, tree_map

from .example_inputs import normalize_inputs
from .leaf_tracer import LeafTracer, _default_arguments
from .patches import in_tracing_thread, instance_forward, recorded_constructors
from .proxies import ConcreteAttribute, ConcreteProxy, _value
from .traced_numbers import _TRACED_TYPES, TracedFloat, TracedInt

__all__ = [
    "ConcreteAttribute", "ConcreteProxy", "ConcreteTracer", "TracedFloat", "TracedInt", "normalize_inputs",
    "trace_with_inputs",
]  # fmt: skip


_META_LEAF_TYPES = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


def _meta_signature(obj: Any) -> Any:
    """A hashable description of ``obj`` from which a meta op's output follows: tensors by their
    metadata (shape, stride, dtype, device, requires_grad), plain constants by value; None for anything
    else (a tensor with values, an object whose state the op might read)."""
    leaves, spec = tree_flatten(obj)
    out = []
    for leaf in leaves:
        if type(leaf) is torch.Tensor or type(leaf) is nn.Parameter:
            if leaf.device.type != "meta":
                return None
            out.append((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.requires_grad))
        elif type(leaf) in _META_LEAF_TYPES:
            out.append((type(leaf), leaf))
        else:
            return None
    return str(spec), tuple(out)


def _meta_key(kind: str, target: Any, args: tuple, kwargs: dict, root: nn.Module) -> Any:
    """The cache key of an op whose inputs all live on ``meta`` (its output's shapes depend on nothing
    else), or None. In-place ops are never cached: the caller may rely on getting its own tensor back.

    A module counts by its type, configuration (``extra_repr``), mode and parameter and buffer
    shapes, so the 53 BatchNorms of a ResNet-50 run their Python meta kernels for about a dozen
    distinct shapes, not 53 times.
    """
    if kind == "call_function":
        name = getattr(target, "__name__", "")
        home = getattr(target, "__module__", None) or ""
        if not home.startswith(("torch", "_operator", "math")) and target is not getattr:
            return None  # a user's function may have side effects a cache would skip
        if name.endswith("_") or name.startswith("__i") or "out" in kwargs:
            return None
        op: Any = target
    elif kind == "call_method":
        if target.endswith("_") or "out" in kwargs:
            return None
        op = ("method", target)
    elif kind == "call_module":
        module = root.get_submodule(target)
        if not type(module).__module__.startswith("torch.nn."):
            return None  # only torch's own layers: their output depends on configuration and shapes alone
        state = _meta_signature(dict(module.named_parameters()) | dict(module.named_buffers()))
        if state is None:
            return None
        op = (type(module), module.extra_repr(), module.training, state)
    else:
        return None
    inputs = _meta_signature((args, kwargs))
    if inputs is None:
        return None
    try:
        hash((op, inputs))
    except TypeError:  # an unhashable constant (a configuration holding a list)
        return None
    return op, inputs


def _fresh_meta(value: Any) -> Any:
    """A new meta tensor like ``value`` (cached outputs are never handed out twice); others as they are."""
    if type(value) is torch.Tensor and value.device.type == "meta":
        return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta").requires_grad_(
            value.requires_grad
        )
    return value


class ConcreteTracer(LeafTracer):
    """A :class:`LeafTracer` that runs every recorded op on example values as it records it."""

    def __init__(self, leaf_modules: Iterable[type] = (), inputs: Mapping[str, Any] | None = None):
        super().__init__(leaf_modules)
        self.inputs = dict(inputs or {})
        self._running_leaf = 0  # > 0 while a leaf module runs on plain values
        self._meta_outputs: dict = {}  # see _run_on_meta

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ConcreteProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        value = self._run(kind, target, args, kwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if type(value) in _TRACED_TYPES and kind != "placeholder":
            number = _TRACED_TYPES[type(value)](value)
            number.node, number.tracer = proxy.node, self
            return number
        proxy.__dict__["value"] = value
        return proxy

    def _run(self, kind: str, target: Any, args: tuple, kwargs: dict) -> Any:
        if kind == "placeholder":
            if target in self.inputs:
                return self.inputs.pop(target)
            if target.startswith("**"):  # a decorator's (*args, **kwargs): the inputs not taken yet
                taken, self.inputs = self.inputs, {}
                return taken
            if target.startswith("*"):
                return ()
            return args[0] if args else None  # a parameter fixed to its default
        if kind == "get_attr":
            obj: Any = self.root
            self._running_leaf += 1  # plain attribute reads (nn.Module.__getattr__ is patched)
            try:
                for part in target.split("."):
                    obj = getattr(obj, part)
            finally:
                self._running_leaf -= 1
            return obj
        a, kw = _value(args), _value(kwargs)
        self._running_leaf += 1  # plain attribute reads while the key is made
        try:
            key = _meta_key(kind, target, a, kw, self.root)
        finally:
            self._running_leaf -= 1
        if key is None:
            return self._run_op(kind, target, a, kw)
        if key not in self._meta_outputs:
            self._meta_outputs[key] = self._run_op(kind, target, a, kw)
        return tree_map(_fresh_meta, self._meta_outputs[key])

    def _run_op(self, kind: str, target: Any, a: tuple, kw: dict) -> Any:
        if kind == "call_function":
            return target(*a, **kw)
        if kind == "call_method":
            return getattr(a[0], target)(*a[1:], **kw)
        if kind == "call_module":
            module = self.root.get_submodule(target)
            self._running_leaf += 1
            try:
                return module(*a, **kw)
            finally:
                self._running_leaf -= 1
        raise RuntimeError(f"ghninit: unexpected fx node kind {kind!r}")  # pragma: no cover

    def call_module(self, m, forward, args, kwargs):
        if self._running_leaf or not in_tracing_thread():
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self._running_leaf or not in_tracing_thread():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a: Any):
        if type(a) in (
            ConcreteProxy,
            ConcreteAttribute,
            TracedInt,
            TracedFloat,
        ):  # before fx's isinstance checks, which see the value
            return a.node
        try:
            return super().create_arg(a)
        except NotImplementedError:
            # An object fx does not know (an ImageList, a dataclass of outputs): its fields.
            if dataclasses.is_dataclass(a) and not isinstance(a, type):
                return super().create_arg({f.name: getattr(a, f.name) for f in dataclasses.fields(a)})
            if hasattr(a, "__dict__"):
                return super().create_arg(dict(vars(a)))
            raise


def trace_with_inputs(
    model: nn.Module, example_inputs: Any, leaf_modules: Iterable[type] = (), on_meta: bool = False
) -> fx.Graph:
    """The fx graph of ``model`` recorded while it runs on ``example_inputs`` (under ``no_grad``).

    Forward arguments not given keep their defaults, fixed as in symbolic tracing. With
    ``on_meta``, the model's parameters and buffers are swapped for meta tensors of their shapes and
    the inputs moved to ``meta`` (shapes only, no arithmetic: fast); call it inside
    :func:`_state_kept`, which puts them back. That fails where the model's Python code needs
    numbers (a detector's box selection).
    """
    inputs = normalize_inputs(model, example_inputs)
    fixed = {k: v for k, v in (_default_arguments(model) or {}).items() if k not in inputs}
    if on_meta:
        _swap_to_meta(model)
        inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, inputs)
    tracer = ConcreteTracer(leaf_modules, inputs)
    with torch.no_grad(), recorded_constructors(), _plain_forward(model):
        return tracer.trace(model, concrete_args=fixed or None)


def _swap_to_meta(model: nn.Module) -> None:
    """Replace every parameter and buffer by a meta tensor of its shape (tied ones stay tied).

    TorchScript modules keep theirs: their stores write through to the C++ module, where
    :func:`~ghninit.graph.trace._state_kept` cannot put the originals back (a scripted leaf then fails
    on the meta inputs, and the trace runs again on the real tensors).
    """
    memo: dict[int, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, torch.jit.ScriptModule):
            continue
        for store in (m._parameters, m._buffers):
            for name, t in store.items():
                if t is not None and t.device.type != "meta":
                    if id(t) not in memo:
                        meta = torch.empty_like(t, device="meta")
                        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
                    store[name] = memo[id(t)]


def _plain_forward(model: nn.Module) -> contextlib.AbstractContextManager:
    """A ``forward`` behind a ``(self, *args, **kwargs)`` decorator (Hugging Face's ``can_return_tuple``)
    is called through a function with the named parameters of the decorated one: fx reads those
    names but would call the decorator with them as positional arguments. Only ``model`` sees it."""
    cls = type(model)
    forward = cls.forward
    code = getattr(forward, "__code__", None)
    if (
        not hasattr(forward, "__wrapped__")
        or code is None
        or not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
    ):
        return contextlib.nullcontext()
    params = list(inspect.signature(inspect.unwrap(forward)).parameters.values())[1:]
    kept = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    header = ", ".join(p.name if p.default is p.empty else f"{p.name}=defaults[{p.name!r}]" for p in kept)
    call = ", ".join(f"{p.name}={p.name}" for p in kept)
    source = f"def forward(self, {header}):\n    return decorated(self, {call})\n"
    scope: dict[str, Any] = {"decorated": forward, "defaults": {p.name: p.default for p in kept}}
    exec(compile(source, f"<ghninit forward of {cls.__name__}>", "exec"), scope)  # noqa: S102 - names from a signature
    return instance_forward(model, scope["forward"])
