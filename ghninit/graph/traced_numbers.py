"""Numbers read from traced values that stay fx nodes: :class:`TracedInt` and :class:`TracedFloat`.

``x.shape[0]`` or ``x.size(1) // p`` of a traced tensor is a real ``int`` to PyTorch and Python, so it
can go wherever a number goes, and it remembers the fx node it came from: arithmetic on it is
recorded as fx records arithmetic on a proxy, so the edges through shapes are kept in the graph.
"""

from __future__ import annotations

import operator

from torch import fx


class _Traced:
    """Mixin of :class:`TracedInt` and :class:`TracedFloat`: the fx node a number came from."""

    node: fx.Node
    tracer: fx.Tracer

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
