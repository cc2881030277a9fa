"""The process-wide state a trace touches, confined to the tracing thread and undone to what it was at import.

torch.fx patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` at class level while it traces,
ghninit's tracers replace the ``__call__`` of TorchScript functions and methods (so that a scripted
function called on traced values is recorded as one op, not handed a proxy it rejects), and the
example-input tracer replaces ``builtins.isinstance``, thirteen torch factories and
``torch.finfo``/``torch.iinfo``. This module makes that safe in processes that do other work at the
same time: ghninit's traces run one at a time under a re-entrant lock (:func:`tracing`); every
replacement checks :func:`in_tracing_thread` and behaves exactly as the original in any other
thread; when the outermost trace ends, every patched global is set back to the original captured
when this module was imported (never to whatever happens to be there then, which a nested or
interleaved patcher may have left). A child forked mid-trace starts with the originals and a fresh
lock. A traced model's own ``forward`` is replaced on that instance only (:func:`instance_forward`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_leaves

from .proxies import _NO_VALUE, ConcreteAttribute, ConcreteProxy, _value

# Factories whose argument parser reads a traced value as a sequence (it has __len__), not as its value.
CONSTRUCTORS = (
    "tensor", "as_tensor", "scalar_tensor", "ones", "zeros", "empty", "full", "rand", "randn", "randint", "arange",
    "linspace", "eye",
)  # fmt: skip
ON_VALUES = ("finfo", "iinfo")  # torch.finfo(x.dtype): called on the value

ORIGINAL_ISINSTANCE = builtins.isinstance
ORIGINAL_TORCH: dict[str, Any] = {name: getattr(torch, name) for name in (*CONSTRUCTORS, *ON_VALUES)}
ORIGINAL_MODULE: dict[str, Any] = {name: nn.Module.__dict__[name] for name in ("__call__", "__getattr__")}
SCRIPT_TYPES: tuple[type, ...] = (torch._C.ScriptFunction, torch._C.ScriptMethod)  # @torch.jit.script, scripted methods
ORIGINAL_SCRIPT_CALL: dict[type, Any] = {cls: cls.__dict__["__call__"] for cls in SCRIPT_TYPES}

_lock = threading.RLock()
_owner: int | None = None  # thread id of the thread tracing now
_depth = 0  # nesting of tracing() in that thread
_patch_depth = 0  # nesting of patched() in that thread
_swapped: weakref.WeakKeyDictionary[nn.Module, type] = weakref.WeakKeyDictionary()  # instance -> its class


def in_tracing_thread() -> bool:
    """Whether the calling thread is the one running a ghninit trace now."""
    return _owner == threading.get_ident()


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """Hold the trace lock (re-entrant); when the outermost hold ends, put every patched global back."""
    global _owner, _depth
    with _lock:
        _owner = threading.get_ident()
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
            if _depth == 0:
                _owner = None
                restore_originals()


def restore_originals() -> None:
    """Set every global a trace may patch back to the object captured at import."""
    if builtins.isinstance is not ORIGINAL_ISINSTANCE:
        builtins.isinstance = ORIGINAL_ISINSTANCE
    for name, fn in ORIGINAL_TORCH.items():
        if getattr(torch, name) is not fn:
            setattr(torch, name, fn)
    for name, fn in ORIGINAL_MODULE.items():
        if nn.Module.__dict__.get(name) is not fn:
            setattr(nn.Module, name, fn)
    for cls, fn in ORIGINAL_SCRIPT_CALL.items():
        if cls.__dict__.get("__call__") is not fn:
            cls.__call__ = fn
    for model, cls in list(_swapped.items()):
        model.__class__ = cls
    _swapped.clear()


@contextlib.contextmanager
def patched(replacements: dict[str, Callable], isinstance_replacement: Callable) -> Iterator[None]:
    """Install replacements of torch functions (by name) and of ``builtins.isinstance`` for one trace.

    Each replacement must itself check :func:`in_tracing_thread`; leaving puts the originals back.
    """
    global _patch_depth
    with tracing():
        _patch_depth += 1
        try:
            if _patch_depth == 1:  # a nested example trace keeps the outer one's replacements
                for name, fn in replacements.items():
                    setattr(torch, name, fn)
                builtins.isinstance = isinstance_replacement
            yield
        finally:
            _patch_depth -= 1
            if _patch_depth == 0:
                builtins.isinstance = ORIGINAL_ISINSTANCE
                for name in replacements:
                    setattr(torch, name, ORIGINAL_TORCH[name])


def guarded(name: str, traced: Callable) -> Callable:
    """``torch.<name>`` as ``traced`` in the tracing thread, the original in every other thread."""
    original = ORIGINAL_TORCH[name]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _owner is None or _owner != threading.get_ident():
            return original(*args, **kwargs)
        return traced(original, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return wrapper


def guarded_class(name: str, traced: Callable) -> type:
    """As :func:`guarded`, for a class (``torch.finfo``): ``isinstance(x, torch.finfo)`` keeps working."""
    original = ORIGINAL_TORCH[name]

    class _Meta(type):
        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            if _owner is None or _owner != threading.get_ident():
                return original(*args, **kwargs)
            return traced(original, *args, **kwargs)

        def __instancecheck__(cls, obj: Any) -> bool:
            return ORIGINAL_ISINSTANCE(obj, original)

        def __subclasscheck__(cls, sub: type) -> bool:
            return issubclass(sub, original)

    return _Meta(name, (), {"__doc__": original.__doc__, "__wrapped__": original, "__module__": "torch"})


@contextlib.contextmanager
def instance_forward(model: nn.Module, forward: Callable) -> Iterator[None]:
    """``model``'s class seen as having ``forward`` for the duration, on this instance only.

    fx reads ``type(root).forward``, so the instance is given a subclass of its own class that
    differs only in ``forward`` (same name); its class and every other instance are untouched.
    """
    cls = type(model)
    view = type(
        cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    )
    with tracing():
        _swapped.setdefault(model, cls)
        model.__class__ = view
        try:
            yield
        finally:
            model.__class__ = cls
            _swapped.pop(model, None)


def _recorded_script_call(cls: type) -> Callable:
    """``cls.__call__`` that records a call on traced values as one op (in the tracing thread only).

    TorchScript's argument parser is C++ and rejects a proxy. Recorded as a ``call_function`` node
    whose target is the scripted function, it runs on the values in the example-input tracer (the
    call then has no proxies and goes to the original) and is an op without a GHN rule in the graph.
    """
    original = ORIGINAL_SCRIPT_CALL[cls]

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if _owner is not None and _owner == threading.get_ident():
            proxy = next(iter(_flat(args, kwargs)), None)
            if proxy is not None:
                return proxy.tracer.create_proxy("call_function", fn, args, kwargs, name=getattr(fn, "name", None))
        return original(fn, *args, **kwargs)

    call.__name__ = call.__qualname__ = "__call__"
    call.__wrapped__ = original  # type: ignore[attr-defined]
    return call


_SCRIPT_CALLS = {cls: _recorded_script_call(cls) for cls in SCRIPT_TYPES}


def record_script_calls() -> None:
    """Install :func:`_recorded_script_call` on TorchScript's function and method types; call inside
    :func:`tracing`, whose outermost exit puts the originals back (:func:`restore_originals`)."""
    for cls, call in _SCRIPT_CALLS.items():
        if cls.__dict__.get("__call__") is not call:
            cls.__call__ = call


def _after_fork_in_child() -> None:
    """A child forked while a trace ran keeps running; it must not inherit the trace's patches or lock."""
    global _lock, _owner, _depth, _patch_depth
    if _owner is not None and _owner == threading.get_ident():
        return  # forked by the traced code itself: the trace goes on in the child and ends as usual
    _lock = threading.RLock()
    _owner, _depth, _patch_depth = None, 0, 0
    restore_originals()


# The example-input tracer's replacements.


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


def recorded_constructors() -> contextlib.AbstractContextManager:
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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
