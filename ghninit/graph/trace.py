"""Symbolic tracing of an ``nn.Module`` with torch.fx, keeping supported layers as leaves.

Layers that have a rule in :mod:`ghninit.graph.primitives`, parameter-free ``torch.nn`` layers, layers
that own parameters directly (``GroupNorm``, ``PReLU``...) and any types the caller names are not
traced into; everything else is. No example input is needed. When fx cannot trace a module, the
error names the module and suggests the fix, in the spirit of
``torchvision.models.feature_extraction``. :func:`trace_model` tries this first and falls back to
tracing with an example input (:mod:`~ghninit.graph.concrete`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch import fx
from torch.utils._pytree import tree_leaves

from ..errors import TraceError
from .example_inputs import infer_example_inputs, is_torchvision_detector, normalize_inputs, small_detection_inputs
from .patches import in_tracing_thread, tracing
from .primitives import module_rule, registered_module_types

_LEAF_TYPES: list[type] = []
_MISSING = object()


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
        self.failed_module: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.forced_leaf_types):
            return True
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
            return super().trace(root, concrete_args)

    def call_module(self, m, forward, args, kwargs):
        if not in_tracing_thread():  # fx patched nn.Module.__call__ for every thread: not ours to record
            return forward(*args, **kwargs)
        paths = self.submodule_paths
        if paths and m not in paths and not any(isinstance(a, fx.Proxy) for a in tree_leaves((args, kwargs))):
            return forward(*args, **kwargs)  # a module outside the model, on plain values: nothing to record
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
    from .concrete import trace_with_inputs  # the example-input tracer builds on LeafTracer, below

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
