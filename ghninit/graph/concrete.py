"""Tracing with an example input: the same fx graph as symbolic tracing, for models fx alone cannot follow.

:class:`ConcreteTracer` is :class:`~ghninit.graph.trace.LeafTracer` whose proxies also carry the
value the op returns on the example input: every recorded op (and every leaf module) is run on
those values as it is recorded. Where symbolic tracing stops (``bool()`` of a traced value, ``len``,
iteration, ``int()``, ``isinstance(x, torch.Tensor)``) the tracer answers with the value instead and
records nothing, so the control flow that depends on values (detectors' box selection, shape
checks on the input) follows the example. Everything symbolic tracing records is recorded the same
way, by the same leaf decisions, so for a model both can trace the fx graph, and so the GHN graph,
is the same. Values may live on the ``meta`` device (no memory); ops that need real numbers then fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import operator
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_leaves, tree_map

from ..errors import TraceError
from .example_inputs import example_call, infer_example_inputs, is_torchvision_detector, small_detection_inputs
from .patches import (
    CONSTRUCTORS,
    ON_VALUES,
    ORIGINAL_ISINSTANCE,
    guarded,
    guarded_class,
    in_tracing_thread,
    instance_forward,
    patched,
    tracing,
)
from .trace import LeafTracer, _default_arguments, trace

_NO_VALUE = object()


def _value(a: Any) -> Any:
    """``a`` with every traced proxy inside (tuples, lists, dicts, slices) replaced by its value."""
    if isinstance(a, fx.Proxy):
        return _proxy_value(a)
    if isinstance(a, _Traced):
        return a.plain()
    if isinstance(a, tuple):
        items = [_value(x) for x in a]
        return type(a)(*items) if hasattr(a, "_fields") else tuple(items)
    if isinstance(a, list):
        return [_value(x) for x in a]
    if isinstance(a, dict):
        return (
            type(a)({k: _value(v) for k, v in a.items()})
            if type(a) is not dict
            else {k: _value(v) for k, v in a.items()}
        )
    if isinstance(a, slice):
        return slice(_value(a.start), _value(a.stop), _value(a.step))
    return a


def _proxy_value(p: fx.Proxy) -> Any:
    value = p.__dict__.get("value", _NO_VALUE)
    if value is _NO_VALUE:
        raise RuntimeError(f"ghninit: no example value recorded for {p!r}")
    return value


class ConcreteProxy(fx.Proxy):
    """An fx proxy that also holds the value its op returned on the example input."""

    def __getattr__(self, k: str) -> ConcreteAttribute:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        return ConcreteAttribute(self, k)

    def __bool__(self) -> bool:
        return bool(_proxy_value(self))

    def __len__(self) -> int:
        return len(_proxy_value(self))

    def __int__(self) -> int:
        return int(_proxy_value(self))

    def __index__(self) -> int:
        return _proxy_value(self).__index__()

    def __float__(self) -> float:
        return float(_proxy_value(self))

    def __contains__(self, item: object) -> bool:
        return _value(item) in _proxy_value(self)

    def __setitem__(self, key: Any, item: Any) -> None:  # in place, as on the value
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, item), {})

    def __iter__(self) -> Iterator[fx.Proxy]:
        value = _proxy_value(self)
        if isinstance(value, Mapping):
            return iter(list(value.keys()))
        return (self[i] for i in range(len(value)))

    def keys(self):  # ``**x`` and ``x.keys()`` on a traced mapping
        value = _proxy_value(self)
        if isinstance(value, Mapping):
            return value.keys()
        return super().keys()


class ConcreteAttribute(ConcreteProxy, fx.proxy.Attribute):
    """``x.attr`` of a traced value: a node only when used as a value, a method call otherwise."""

    def __init__(self, root: ConcreteProxy, attr: str):
        fx.proxy.Attribute.__init__(self, root, attr)
        self.value = getattr(_proxy_value(root), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_method", self.attr, (self.root, *args), kwargs)


class _Traced:
    """Mixin of :class:`TracedInt` and :class:`TracedFloat`: the fx node a number came from."""

    node: fx.Node
    tracer: ConcreteTracer

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.node.name}={self.plain()!r})"

    def plain(self) -> int | float:
        return type(self).__mro__[2](self)

    def __reduce__(self):  # copies are plain numbers
        return (type(self).__mro__[2], (self.plain(),))


class TracedInt(_Traced, int):
    """A number read from a traced value (``x.shape[0]``, ``x.size(1) // p``): a real ``int`` to PyTorch
    and Python (``t.expand(n, -1)``, ``torch.stack(..., dim=x.dim())``, ``range(n)``), and an fx node
    to the ops it feeds: arithmetic on it is recorded as fx records it, so shape edges are kept."""


class TracedFloat(_Traced, float):
    """As :class:`TracedInt`, for a ``float``."""


_TRACED_TYPES = {int: TracedInt, float: TracedFloat}


def _traced_op(name: str, reflected: bool = False):
    target = getattr(operator, name)

    def op(self, *other):
        if other and not isinstance(other[0], int | float | fx.Proxy):
            return NotImplemented
        args = (other[0], self) if reflected else (self, *other)
        return self.tracer.create_proxy("call_function", target, args, {})

    return op


for _cls in (TracedInt, TracedFloat):
    for _name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "lshift", "rshift", "and_", "or_", "xor"):
        if hasattr(_cls.__mro__[2], f"__{_name.strip('_')}__"):
            setattr(_cls, f"__{_name.strip('_')}__", _traced_op(_name))
            setattr(_cls, f"__r{_name.strip('_')}__", _traced_op(_name, reflected=True))
    for _name in ("neg", "pos", "abs", "invert"):
        if hasattr(_cls.__mro__[2], f"__{_name}__"):
            setattr(_cls, f"__{_name}__", _traced_op(_name))


class ConcreteTracer(LeafTracer):
    """A :class:`LeafTracer` that runs every recorded op on example values as it records it."""

    def __init__(self, leaf_modules: Iterable[type] = (), inputs: Mapping[str, Any] | None = None):
        super().__init__(leaf_modules)
        self.inputs = dict(inputs or {})
        self._running_leaf = 0  # > 0 while a leaf module runs on plain values

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


def normalize_inputs(model: nn.Module, example_inputs: Any) -> dict[str, Any]:
    """Map ``example_inputs`` to the names of ``model.forward``'s parameters.

    ``example_inputs`` is a tuple of positional arguments, a dict of keyword arguments, or a single
    argument (a tensor, or a list of images for a torchvision detector).
    """
    params = list(inspect.signature(model.forward).parameters.values())
    args, kwargs = example_call(example_inputs)
    if kwargs:
        names = {p.name for p in params}
        unknown = [k for k in kwargs if k not in names]
        if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
            raise TypeError(
                f"example_inputs names {unknown}, which {type(model).__name__}.forward does not take "
                f"(its arguments: {[p.name for p in params]})"
            )
        return kwargs
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional):
        raise TypeError(
            f"example_inputs has {len(args)} positional values but {type(model).__name__}.forward "
            f"takes {len(positional)} ({[p.name for p in positional]})"
        )
    return {p.name: a for p, a in zip(positional, args)}


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
    with torch.no_grad(), _recorded_constructors(), _plain_forward(model):
        return tracer.trace(model, concrete_args=fixed or None)


def _swap_to_meta(model: nn.Module) -> None:
    """Replace every parameter and buffer by a meta tensor of its shape (tied ones stay tied)."""
    memo: dict[int, torch.Tensor] = {}
    for m in model.modules():
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


def _record_constructor(original, *args, **kwargs):
    """``torch.tensor(x.shape[1])``, ``torch.ones(B, N)`` and the like are recorded (run on the values)."""
    proxy = next((a for a in _flat(args, kwargs) if _ISINSTANCE(a, ConcreteProxy)), None)
    if proxy is None:
        return original(*args, **kwargs)
    return proxy.tracer.create_proxy("call_function", original, args, kwargs)


def _on_values(original, *args, **kwargs):  # dtype information: nothing to record
    return original(*_value(args), **_value(kwargs))


# Made once: the same objects are installed by every trace and checked for by the tests.
_REPLACEMENTS = {
    **{name: guarded(name, _record_constructor) for name in CONSTRUCTORS},
    **{name: guarded_class(name, _on_values) for name in ON_VALUES},
}


def _recorded_constructors() -> contextlib.AbstractContextManager:
    """Torch factories and ``isinstance`` that understand traced values, in the tracing thread only."""
    return patched(_REPLACEMENTS, _isinstance_of_value)


_ISINSTANCE = ORIGINAL_ISINSTANCE


def _isinstance_of_value(obj: Any, cls: Any) -> bool:
    """``isinstance`` while tracing: a traced value is an instance of what its value is.

    Python code asks (``isinstance(images, list)``, ``isinstance(x, torch.Tensor)``); C code does not
    see this (lying to it through ``__class__`` would let it read a proxy as a tensor). Other
    threads get the plain answer.
    """
    if _ISINSTANCE(obj, cls):
        return True
    if (type(obj) is ConcreteProxy or type(obj) is ConcreteAttribute) and in_tracing_thread():
        value = obj.__dict__.get("value", _NO_VALUE)
        return value is not _NO_VALUE and _ISINSTANCE(value, cls)
    return False


def _flat(args: tuple, kwargs: dict) -> list:
    """The proxies anywhere in ``args`` and ``kwargs`` (lists, tuples, named tuples, dicts)."""
    return [a for a in tree_leaves((args, kwargs)) if _ISINSTANCE(a, fx.Proxy)]


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
            if len(now) != len(items) or any(now.get(n, _NO_VALUE) is not v for n, v in items.items()):
                now.clear()
                now.update(items)
