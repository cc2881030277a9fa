"""The 15 GHN-2 primitives and the registry that maps layers and tensor ops to them.

A *module rule* turns one leaf ``nn.Module`` into a short chain of graph nodes (for example a
``Conv2d`` becomes ``conv`` weight -> ``bias``); a *function rule* turns one traced function or
method call (``add``, ``cat``, ``mean``...) into an op node, or into nothing. Anything without a
rule is dropped from the graph and its inputs are wired to its consumers. This registry is the one
place to extend coverage: decorate a function with :func:`register_module` or
:func:`register_function`, the way timm registers models.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

PRIMITIVES: tuple[str, ...] = (
    "max_pool", "avg_pool", "sep_conv", "dil_conv", "conv", "msa", "cse", "sum",
    "concat", "input", "bias", "bn", "ln", "pos_enc", "glob_avg",
)  # fmt: skip
PRIMITIVE_INDEX: dict[str, int] = {p: i for i, p in enumerate(PRIMITIVES)}
NORM_PRIMITIVES = ("bn", "ln")


@dataclass(frozen=True)
class NodeSpec:
    """One graph node a rule asks for.

    Attributes:
        primitive: one of :data:`PRIMITIVES`.
        param: attribute path of the parameter relative to the module (``"weight"``,
            ``"out_proj.bias"``), or ``None`` for a parameter-free op.
        shape: the parameter's shape, or the op's own shape (pooling: ``(1, 1, k, k)``).
        min_inputs: the node is kept only with at least this many distinct inputs
            (``sum`` and ``concat`` use 2).
        transposed: the parameter is stored as the transpose of ``shape`` (a linear map kept as
            ``(in, out)``, Hugging Face's ``Conv1D``): the prediction is transposed when written.
    """

    primitive: str
    param: str | None = None
    shape: tuple[int, ...] | None = None
    min_inputs: int = 0
    transposed: bool = False


ModuleRule = Callable[[nn.Module], "list[NodeSpec] | None"]
FunctionRule = Callable[[fx.Node, dict], "list[NodeSpec] | None"]

_MODULE_RULES: list[tuple[tuple[type, ...], ModuleRule]] = []
_FUNCTION_RULES: dict[object, FunctionRule] = {}


def register_module(*types: type) -> Callable[[ModuleRule], ModuleRule]:
    """Register a rule for modules that are instances of ``types`` (subclasses count).

    Later registrations take precedence, so a rule for a subclass can refine a base rule.
    Registered modules are kept as leaves when tracing.
    """

    def wrap(rule: ModuleRule) -> ModuleRule:
        _MODULE_RULES.insert(0, (types, rule))
        return rule

    return wrap


def register_function(*targets: object) -> Callable[[FunctionRule], FunctionRule]:
    """Register a rule for traced calls whose target is one of ``targets``.

    A target is a Python callable (``torch.cat``, ``operator.add``) for ``call_function``
    nodes, or a method name string (``"mean"``) for ``call_method`` nodes.
    """

    def wrap(rule: FunctionRule) -> FunctionRule:
        for target in targets:
            _FUNCTION_RULES[target] = rule
        return rule

    return wrap


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule registered for ``module``'s type, or ``None``."""
    for types, rule in _MODULE_RULES:
        if isinstance(module, types):
            return rule
    return None


def function_rule(target: object) -> FunctionRule | None:
    """The rule registered for a traced call target, or ``None``."""
    try:
        return _FUNCTION_RULES.get(target)
    except TypeError:  # unhashable target
        return None


def class_path(cls: type) -> str:
    """Where a class is defined, as users import it: ``torch.nn.GroupNorm``, ``transformers.pytorch_utils.Conv1D``."""
    module, name = cls.__module__, cls.__qualname__
    if module.startswith("torch.nn.modules.") and getattr(nn, name, None) is cls:
        return f"torch.nn.{name}"
    return f"{module}.{name}"


def registered_module_types() -> tuple[type, ...]:
    """All module types that have a rule (these are traced as leaves)."""
    return tuple(t for types, _ in _MODULE_RULES for t in types)


# ---------------------------------------------------------------------------------------------
# Module rules


def _pair(value: int | Iterable[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


def _weight_and_bias(primitive: str, weight: torch.Tensor, bias: torch.Tensor | None, prefix=""):
    nodes = [NodeSpec(primitive, prefix + "weight", tuple(weight.shape))]
    if bias is not None:
        nodes.append(NodeSpec("bias", prefix + "bias", tuple(bias.shape)))
    return nodes


@register_module(nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
def _conv_or_linear(module: nn.Module) -> list[NodeSpec] | None:
    # A transposed convolution's weight is (in, out / groups, k, k): a kernel all the same.
    if module.weight is None:
        return None
    primitive = "conv"
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.groups > 1:
        primitive = "dil_conv" if min(module.dilation) > 1 else "sep_conv"
    return _weight_and_bias(primitive, module.weight, module.bias)


@register_module(nn.Conv3d, nn.ConvTranspose3d)
def _conv3d(module: nn.Module) -> list[NodeSpec] | None:
    """Inflation rule: a 3-D kernel ``(out, in, T, kh, kw)`` is described as its 2-D counterpart.

    The GHN sees and predicts ``(out, in, kh, kw)``, as for a ``Conv2d`` of the same channels,
    groups and spatial dilation; :func:`ghninit.write.tensors.inflate` then repeats the predicted
    kernel ``T`` times along time and divides it by ``T`` (I3D). A ``(1, k, k)`` spatial kernel
    is thus the 2-D one, and a ``(T, 1, 1)`` temporal kernel a 1x1 conv averaged over time, so
    (2+1)-D and separable 3-D blocks need no rule of their own.
    """
    if module.weight is None:
        return None
    primitive = "conv"
    if module.groups > 1:
        primitive = "dil_conv" if min(module.dilation[1:]) > 1 else "sep_conv"
    out, inp, _, kh, kw = module.weight.shape
    nodes = [NodeSpec(primitive, "weight", (out, inp, kh, kw))]
    if module.bias is not None:
        nodes.append(NodeSpec("bias", "bias", tuple(module.bias.shape)))
    return nodes


@register_module(nn.Conv1d, nn.ConvTranspose1d)
def _conv1d(module: nn.Module) -> list[NodeSpec] | None:
    """A 1-D kernel ``(out, in, k)`` is described as the square 2-D kernel ``(out, in, k, k)``.

    The GHN sees and predicts the ``(k, k)`` kernel it was trained on (DeepNets-1M has square
    kernels only); :func:`ghninit.write.tensors.collapse` then sums its ``k`` rows into the 1-D
    kernel, the converse of the I3D inflation of 3-D kernels (:func:`_conv3d`): the 2-D
    convolution of an image whose rows are all one signal is the 1-D convolution of that signal
    with the row sum. Groups and dilation choose the primitive as for ``Conv2d``.
    """
    if module.weight is None:
        return None
    primitive = "conv"
    if module.groups > 1:
        primitive = "dil_conv" if module.dilation[0] > 1 else "sep_conv"
    out, inp, k = module.weight.shape
    nodes = [NodeSpec(primitive, "weight", (out, inp, k, k))]
    if module.bias is not None:
        nodes.append(NodeSpec("bias", "bias", tuple(module.bias.shape)))
    return nodes


def _spatial(value: int | Iterable[int]) -> tuple[int, int]:
    """The (height, width) of a pooling window: a 3-D one's last two sizes, a 1-D one's size twice."""
    return _pair(value) if isinstance(value, int) else _pair(tuple(value)[-2:])


@register_module(nn.modules.batchnorm._BatchNorm)
def _batch_norm(module: nn.Module) -> list[NodeSpec] | None:
    # BatchNorm1d/2d/3d alike. The norm bias is predicted together with the weight, so it is not a node.
    if module.weight is None:
        return None
    return [NodeSpec("bn", "weight", tuple(module.weight.shape))]


@register_module(nn.LayerNorm)
def _layer_norm(module: nn.Module) -> list[NodeSpec] | None:
    if module.weight is None:
        return None
    return [NodeSpec("ln", "weight", tuple(module.weight.shape))]


# 3-D pools (video models) are described by their spatial window, as 2-D ones; 1-D pools by the
# square window, as 1-D convolutions are
@register_module(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _max_pool(module: nn.Module) -> list[NodeSpec]:
    return [NodeSpec("max_pool", shape=(1, 1, *_spatial(module.kernel_size)))]


@register_module(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avg_pool(module: nn.Module) -> list[NodeSpec]:
    return [NodeSpec("avg_pool", shape=(1, 1, *_spatial(module.kernel_size)))]


@register_module(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def _adaptive_avg_pool(module: nn.Module) -> list[NodeSpec]:
    return [NodeSpec("glob_avg")]


@register_module(nn.MultiheadAttention)
def _multihead_attention(module: nn.MultiheadAttention) -> list[NodeSpec]:
    if module.in_proj_weight is not None:
        nodes = _weight_and_bias("conv", module.in_proj_weight, module.in_proj_bias, "in_proj_")
    else:  # separate q/k/v projections: describe the query projection, the others stay as they are
        nodes = [NodeSpec("conv", "q_proj_weight", tuple(module.q_proj_weight.shape))]
    nodes.append(NodeSpec("msa"))
    nodes += _weight_and_bias("conv", module.out_proj.weight, module.out_proj.bias, "out_proj.")
    return nodes


try:  # torchvision's LayerNorm2d subclasses nn.LayerNorm; Swin attention uses weights functionally
    from torchvision.models import swin_transformer as _swin

    @register_module(_swin.ShiftedWindowAttention)
    def _shifted_window_attention(module: nn.Module) -> list[NodeSpec]:
        qkv, proj = module.qkv, module.proj
        nodes = _weight_and_bias("conv", qkv.weight, qkv.bias, "qkv.")
        nodes.append(NodeSpec("msa"))
        return nodes + _weight_and_bias("conv", proj.weight, proj.bias, "proj.")

    from torchvision.models.video import swin_transformer as _swin3d

    # the video Swin's window attention (a class of its own, not a subclass): the same description
    register_module(_swin3d.ShiftedWindowAttention3d)(_shifted_window_attention)

except ImportError:  # pragma: no cover - torchvision is a dependency, but keep the core usable
    pass


# ---------------------------------------------------------------------------------------------
# Function rules


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@register_function(operator.add, operator.iadd, torch.add, "add", "add_")
def _sum(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("sum", min_inputs=2)]


@register_function(torch.cat, torch.concat, torch.concatenate, "cat")
def _concat(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("concat", min_inputs=2)]


@register_function(torch.mean, "mean")
def _mean(node: fx.Node, modules: dict) -> list[NodeSpec] | None:
    # A mean that keeps dims is global pooling; one that drops them (a flattening mean) is not.
    return [NodeSpec("glob_avg")] if _arg(node, 2, "keepdim", False) else None


@register_function(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
def _adaptive_avg_pool_fn(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("glob_avg")]


@register_function(F.max_pool1d, F.max_pool2d)
def _max_pool_fn(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("max_pool", shape=(1, 1, *_pair(_arg(node, 1, "kernel_size"))))]


@register_function(F.avg_pool1d, F.avg_pool2d)
def _avg_pool_fn(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("avg_pool", shape=(1, 1, *_pair(_arg(node, 1, "kernel_size"))))]


@register_function(F.max_pool3d)
def _max_pool3d_fn(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("max_pool", shape=(1, 1, *_spatial(_arg(node, 1, "kernel_size"))))]


@register_function(F.avg_pool3d)
def _avg_pool3d_fn(node: fx.Node, modules: dict) -> list[NodeSpec]:
    return [NodeSpec("avg_pool", shape=(1, 1, *_spatial(_arg(node, 1, "kernel_size"))))]


_HARD_MODULES = (nn.Hardsigmoid, nn.Hardswish)
_HARD_FUNCTIONS = (F.hardsigmoid, F.hardswish, "hardsigmoid", "hardswish")


def _is_hard_activation(node: object, modules: dict) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _HARD_MODULES)
    return node.op in ("call_function", "call_method") and node.target in _HARD_FUNCTIONS


def _is_reshaped_hard_gate(node: object, modules: dict) -> bool:
    """A gate computed as ``hard_activation(...)`` followed by one reshaping op (``.view(b, c, 1, 1)``)."""
    if not isinstance(node, fx.Node) or node.op not in ("call_method", "call_function") or not node.args:
        return False
    return function_rule(node.target) is None and _is_hard_activation(node.args[0], modules)


@register_function(operator.mul, operator.imul, torch.mul, "mul", "mul_")
def _channel_gate(node: fx.Node, modules: dict) -> list[NodeSpec] | None:
    # The reference keeps a product as `cse` when the op two places before it (in its topological
    # order) is a hard activation: the DeepNets-1M gate `x * hardswish(fc2(...)).view(b, c, 1, 1)`.
    # A gate that feeds the product directly (torchvision's MobileNetV3: `hardsigmoid(...) * x`)
    # puts the gate's own layer there instead, so the reference drops it, and so do we.
    if any(_is_reshaped_hard_gate(a, modules) for a in node.args[:2]):
        return [NodeSpec("cse", min_inputs=2)]
    return None


def is_positional_encoding(param: torch.Tensor) -> bool:
    """A parameter added to activations is a positional encoding if it is (1, N, C) or (1, C, H, W)."""
    return param.dim() in (3, 4) and param.shape[0] == 1 and math.prod(param.shape[1:]) > 1


# ---------------------------------------------------------------------------------------------
# GHN-3 rules (used by ghninit.graph.build.GHN3_RULES; GHN-2 graphs never call these)

_SHAPE_METHODS = ("size", "dim", "numel")
_SIGMOID_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid)
_SIGMOID_FUNCTIONS = (
    torch.sigmoid, F.sigmoid, F.hardsigmoid, F.hardswish, F.logsigmoid, "sigmoid", "sigmoid_", "hardsigmoid", "hardswish",
)  # fmt: skip
_GATE_MODULES = (*_SIGMOID_MODULES, nn.ReLU)
_GATE_FUNCTIONS = (*_SIGMOID_FUNCTIONS, torch.relu, F.relu, "relu", "relu_")


def is_shape_query(node: fx.Node) -> bool:
    """A traced read of a tensor's shape (``x.shape``, ``x.size()``, ``x.ndim``): no data flows through it."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("ndim",))


def _calls(node: object, modules: dict, module_types: tuple, functions: tuple) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(node.target), module_types)
    return node.op in ("call_function", "call_method") and any(node.target is f or node.target == f for f in functions)


def is_gated_network(nodes: Iterable[fx.Node], modules: dict) -> bool:
    """Whether any of ``nodes`` is a sigmoid- or swish-type op (GHN-3 then expects squeeze-excitation gates)."""
    return any(_calls(n, modules, _SIGMOID_MODULES, _SIGMOID_FUNCTIONS) for n in nodes)


def mean_as_pool_rule(node: fx.Node, modules: dict) -> list[NodeSpec]:
    """GHN-3: every mean is global pooling, whether or not it keeps the reduced dims."""
    return [NodeSpec("glob_avg")]


def gate_product_rule(node: fx.Node, modules: dict) -> list[NodeSpec] | None:
    """GHN-3 (gated networks): a product with a gate activation (or a reshaped one) is ``cse``."""
    for arg in node.args[:2]:
        if (
            isinstance(arg, fx.Node)
            and arg.op in ("call_method", "call_function")
            and function_rule(arg.target) is None
        ):
            if not _calls(arg, modules, _GATE_MODULES, _GATE_FUNCTIONS) and arg.args:
                arg = arg.args[0]  # one reshaping op between the gate and the product
        if _calls(arg, modules, _GATE_MODULES, _GATE_FUNCTIONS):
            return [NodeSpec("cse", min_inputs=2)]
    return None


def _patch_merging_types() -> tuple[type, ...]:
    try:
        from torchvision.models import swin_transformer as swin
    except ImportError:  # pragma: no cover
        return ()
    return tuple(getattr(swin, n) for n in ("PatchMerging", "PatchMergingV2") if hasattr(swin, n))


def is_detached_linear(module: nn.Module, path: str, modules: dict) -> bool:
    """GHN-3: a bias-free ``nn.Linear`` (autograd reaches its weight through a transpose, apart from its input).

    The reduction of torchvision's Swin patch merging is the exception: GHN-3 rewires it in line.
    """
    if not isinstance(module, nn.Linear) or module.bias is not None:
        return False
    parent = modules.get(path.rpartition(".")[0])
    return not isinstance(parent, _patch_merging_types())


SOFTMAX_TARGETS = (F.softmax, torch.softmax, "softmax")


def softmax_rule(node: object, modules: dict | None = None) -> list[NodeSpec]:
    """GHN-3: a softmax (``F.softmax`` call or ``nn.Softmax`` layer) is the attention op ``msa``."""
    return [NodeSpec("msa")]


def without_unweighted_attention(specs: list[NodeSpec], module: nn.Module, node: fx.Node) -> list[NodeSpec]:
    """GHN-3: ``nn.MultiheadAttention(..., need_weights=False)`` runs fused attention, with no softmax to describe."""
    if isinstance(module, nn.MultiheadAttention):
        need_weights = node.args[4] if len(node.args) > 4 else node.kwargs.get("need_weights", True)
        if need_weights is False:
            return [s for s in specs if s.primitive != "msa"]
    return specs


def _parameter_of(node: object, modules: dict) -> tuple[str, torch.Tensor] | None:
    """``(name, parameter)`` when ``node`` reads a parameter of the model (an fx ``get_attr``)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    path, _, attr = node.target.rpartition(".")
    owner = modules.get(path)
    param = getattr(owner, attr, None) if owner is not None else None
    return (node.target, param) if isinstance(param, nn.Parameter) else None


@register_function(F.linear, F.conv1d, F.conv2d)
def _functional_layer(node: fx.Node, modules: dict) -> list[NodeSpec] | None:
    # A layer that uses its weight functionally (BEiT's attention: F.linear(x, self.qkv.weight,
    # bias=torch.cat(...))) is the same layer as a module call; a computed bias is not a node.
    weight = _parameter_of(_arg(node, 1, "weight"), modules)
    if weight is None or weight[1].dim() < 2:
        return None
    primitive = "conv"
    if node.target in (F.conv1d, F.conv2d) and _arg(node, 6, "groups", 1) != 1:
        primitive = "dil_conv" if max(_pair(_arg(node, 5, "dilation", 1))) > 1 else "sep_conv"
    shape = tuple(weight[1].shape)
    if node.target is F.conv1d and len(shape) == 3:  # the square 2-D kernel, as for nn.Conv1d
        shape = (*shape, shape[2])
    specs = [NodeSpec(primitive, weight[0], shape)]
    bias = _parameter_of(_arg(node, 2, "bias"), modules)
    if bias is not None:
        specs.append(NodeSpec("bias", bias[0], tuple(bias[1].shape)))
    return specs


@register_function(torch.addmm)
def _transposed_linear(node: fx.Node, modules: dict) -> list[NodeSpec] | None:
    # ``addmm(bias, x, weight)`` with a weight parameter stored (in, out) and a bias parameter (out,)
    # is a linear layer whose weight is the transpose of nn.Linear's: Hugging Face's Conv1D (GPT-2 and
    # others) and any layer written the same way. Recognised by this structure, not by
    # the class: fx traces into such a module, so its call is this one op on two parameters. It is
    # described as nn.Linear is, ``conv`` (out, in) -> ``bias``, and the prediction written transposed.
    bias = _parameter_of(_arg(node, 0, "input"), modules)
    weight = _parameter_of(_arg(node, 2, "mat2"), modules)
    if weight is None or bias is None or weight[1].dim() != 2 or tuple(bias[1].shape) != weight[1].shape[1:]:
        return None
    n_in, n_out = weight[1].shape
    return [NodeSpec("conv", weight[0], (n_out, n_in), transposed=True), NodeSpec("bias", bias[0], (n_out,))]


@register_module(nn.RNNBase)
def _recurrent(module: nn.RNNBase) -> list[NodeSpec]:
    # GHN-2 has no recurrent primitive; each gate matrix is a linear map, described as `conv` (as
    # nn.Linear is) and each bias as `bias`, layer by layer in the module's own order. An
    # approximation: the recurrence itself is not in the graph.
    nodes = []
    for name, param in module.named_parameters(recurse=False):
        nodes.append(NodeSpec("conv" if param.dim() >= 2 else "bias", name, tuple(param.shape)))
    return nodes
