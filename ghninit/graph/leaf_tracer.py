"""The fx tracer both ways of tracing use: which layers stay leaves, and module paths for error messages.

Layers that have a rule in :mod:`ghninit.graph.primitives`, parameter-free ``torch.nn`` layers, layers
that own parameters directly (``GroupNorm``, ``PReLU``...), timm's own leaf layers that fx cannot
trace alone, TorchScript modules and any types the caller names are not traced into; everything
else is. A parameter-free module that is not one of the model's (``nn.ReLU()(x)`` in a
``forward``) is traced through as the function calls it makes. Its traces run one at a time
(:func:`ghninit.graph.patches.tracing`) and its class-level patches answer other threads as the
originals.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_leaves

from ..errors import TraceError
from .patches import in_tracing_thread, record_script_calls, tracing
from .primitives import module_rule, registered_module_types

_LEAF_TYPES: list[type] = []


def register_leaf_module(*types: type) -> None:
    """Always keep modules of these types as leaves (their parameters keep their own init)."""
    _LEAF_TYPES.extend(types)


def _default_autowrap_modules() -> tuple:
    modules: list = [math]
    try:
        import torchvision.ops

        modules.append(torchvision.ops)
    except ImportError:  # pragma: no cover
        pass
    return tuple(modules)


def _torchvision_op_types() -> tuple[type, ...]:
    try:  # torchvision's simple ops (StochasticDepth, FrozenBatchNorm2d...) are leaves, as in its fx helpers
        import torchvision.ops as ops

        return tuple(v for v in vars(ops).values() if isinstance(v, type) and issubclass(v, nn.Module))
    except ImportError:  # pragma: no cover
        return ()


def _timm_notrace() -> tuple[tuple[type, ...], tuple]:
    """timm's own fx leaf modules and functions, when timm is in use (it is not imported otherwise)."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - older timm
        return (), ()
    from . import timm_rules  # registers rules for some of timm's leaf modules

    modules = tuple(get_notrace_modules())
    timm_rules.register_sublayer_chains(modules)
    return modules, tuple(get_notrace_functions())


class LeafTracer(fx.Tracer):
    """An fx tracer that keeps supported and user-named layers as leaves and tracks module paths."""

    def __init__(self, leaf_modules: Iterable[type] = ()):
        timm_modules, timm_functions = _timm_notrace()
        super().__init__(autowrap_modules=_default_autowrap_modules(), autowrap_functions=timm_functions)
        self.user_leaf_modules = tuple(leaf_modules)
        self.forced_leaf_types = tuple(_LEAF_TYPES) + self.user_leaf_modules
        self.leaf_types = registered_module_types()
        self.notrace_types = timm_modules
        self.childless_leaf_types = _torchvision_op_types()
        self._path_stack: list[str] = []
        self._traceable: dict[int, bool] = {}
        self._model_parameters: set[int] | None = None  # ids of the traced model's parameters
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.forced_leaf_types) or isinstance(m, torch.jit.ScriptModule):
            return True  # TorchScript runs its own forward: it rejects proxies and cannot be traced into
        if self.notrace_types and isinstance(m, self.notrace_types) and _has_no_exact_rule(m):
            # timm marks some modules as not traceable for its feature extraction, which runs the
            # traced graph (e.g. an in-place mul_ that fx would drop). Building a GHN graph only
            # needs the structure, so trace into them when fx can trace the module on its own.
            if id(m) not in self._traceable:
                self._traceable[id(m)] = _traces_alone(m, self.user_leaf_modules)
            return not self._traceable[id(m)]
        if isinstance(m, self.leaf_types):
            return True
        if isinstance(m, self.childless_leaf_types):
            return not any(True for _ in m.children())
        if super().is_leaf_module(m, module_qualified_name):
            # torch.nn containers with sub-layers (TransformerEncoderLayer...) are traced into.
            return not any(True for _ in m.children())
        return False

    def trace(self, root, concrete_args=None) -> fx.Graph:
        """fx's trace, one at a time in the process; its class-level patches answer other threads as the originals."""
        with tracing():
            record_script_calls()
            before = set(vars(root)) if isinstance(root, nn.Module) else set()
            try:
                return super().trace(root, concrete_args)
            finally:
                # fx stores each tensor constant it meets (a buffer of a module made in forward,
                # torch.ones(1) in forward) on the root as _tensor_constantN: the graph does not need them
                for name in [k for k in vars(root) if k not in before and k.startswith("_tensor_constant")]:
                    delattr(root, name)

    def call_module(self, m, forward, args, kwargs):
        if not in_tracing_thread():  # fx patched nn.Module.__call__ for every thread: not ours to record
            return forward(*args, **kwargs)
        paths = self.submodule_paths
        if paths and m not in paths:
            if any(isinstance(a, fx.Proxy) for a in tree_leaves((args, kwargs))):
                self._check_outside_module(m)
            # on plain values: nothing to record; on traced values (nn.ReLU()(x) in a forward): its
            # forward's ops are recorded, as if the module were a function
            return forward(*args, **kwargs)
        self._path_stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:
                self.failed_module = self._path_stack[-1]
            raise
        finally:
            self._path_stack.pop()

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if not in_tracing_thread():  # as nn.Module.__getattr__ for other threads
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def _check_outside_module(self, m: nn.Module) -> None:
        """A module that is not the model's, called on traced values, must have no parameters of its own.

        Made in ``forward`` (``nn.Linear(8, 8)(x)``) or held outside the model (a plain dict or list
        attribute), its parameters are not the model's: no GHN can predict them and no optimiser of
        the model trains them. Without parameters, or holding only the model's own layers
        (``nn.Sequential(self.fc, nn.ReLU())`` made in ``forward``), it is traced through.
        """
        if self._model_parameters is None:
            self._model_parameters = {id(p) for p in self.root.parameters()}
        count = sum(p.numel() for p in m.parameters() if id(p) not in self._model_parameters)
        if not count:
            return
        where = self._path_stack[-1] if self._path_stack else ""
        kind = f"{type(m).__module__}.{type(m).__qualname__}"
        caller = f"the forward of module '{where}'" if where else "the model's forward"
        raise TraceError(
            f"{kind} (with {count:,} parameters not in the model) is called in {caller} but is not a "
            "submodule of the model (made inside forward, or held outside the module tree), so its "
            "parameters are not the model's and cannot be initialised. Fix: create it in __init__ and "
            "assign it to an attribute (self.layer = ...) or put it in an nn.ModuleList/nn.ModuleDict."
        )


def _default_arguments(model: nn.Module) -> dict[str, object] | None:
    """Optional forward arguments with simple defaults, fixed as a plain ``model(x)`` call gives them.

    Without this, fx turns ``mask=None`` into a placeholder and ``if mask is None: x = head(x)``
    takes the wrong branch (timm's Hiera loses its classifier).
    """
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    simple = (type(None), bool, int, float, str)
    fixed = {
        p.name: p.default
        for p in params[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and isinstance(p.default, simple)
    }
    return fixed or None


def _has_no_exact_rule(module: nn.Module) -> bool:
    from .timm_rules import sublayer_chain  # only reached when timm is in use

    return module_rule(module) in (None, sublayer_chain)


def _traces_alone(module: nn.Module, leaf_modules: tuple[type, ...]) -> bool:
    try:
        LeafTracer(leaf_modules).trace(module)
    except Exception:  # any failure means: keep it as a leaf
        return False
    return True
