"""The proxies of the example-input tracer: fx proxies that also carry the value their op returned.

:class:`ConcreteProxy` answers what symbolic tracing cannot (``bool()``, ``len``, iteration,
``int()``, membership) from its value and records nothing for it; ``_value`` replaces every
proxy inside a structure by its value. A number read as an attribute (``x.ndim``) is a
:class:`~ghninit.graph.traced_numbers.TracedInt` tied to its ``getattr`` node, as ``x.shape[0]`` is.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import Any

from torch import fx

from .traced_numbers import _TRACED_TYPES, _Traced

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

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        attribute = ConcreteAttribute(self, k)
        if type(attribute.value) in _TRACED_TYPES:
            # x.ndim: a real int (a dict key, a list length), recorded as the getattr node fx records
            # for it, so what it feeds keeps its edge
            return self.tracer.create_proxy("call_function", getattr, (self, k), {})
        return attribute

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
