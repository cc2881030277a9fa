"""Graph rules for timm layers that torch.fx cannot trace, registered when timm is in use.

timm marks some modules as not traceable (shape-dependent control flow, or in-place ops that
its feature extraction would drop). :mod:`ghninit.graph.trace` traces into them when fx can; the rest
are kept as leaves. Where such a module is a plain chain of layers, a rule here describes it
exactly; any other one is described by :func:`sublayer_chain`, an approximation, so that its
parameters are predicted instead of keeping their own initialisation.
"""

from __future__ import annotations

import torch.nn as nn

from .primitives import NodeSpec, module_rule, register_module, registered_module_types


def _chain(module: nn.Module, *children: str) -> list[NodeSpec]:
    nodes: list[NodeSpec] = []
    for child in children:
        layer = module.get_submodule(child)
        rule = module_rule(layer)
        specs = (rule(layer) if rule else None) or []
        for spec in specs:
            param = f"{child}.{spec.param}" if spec.param else None
            nodes.append(NodeSpec(spec.primitive, param, spec.shape, spec.min_inputs))
    return nodes


try:
    from timm.models.vgg import ConvMlp

    @register_module(ConvMlp)
    def _vgg_conv_mlp(module: nn.Module) -> list[NodeSpec]:
        # fc1 -> act -> dropout -> fc2 -> act; the adaptive pooling for inputs under 7x7 is not a node.
        return _chain(module, "fc1", "fc2")

except ImportError:  # pragma: no cover - depends on the timm version
    pass


def sublayer_chain(module: nn.Module) -> list[NodeSpec] | None:
    """A leaf described as the chain of its sub-layers that have rules, in registration order.

    Used for timm modules that fx cannot trace and that have no exact rule (MobileViT and
    TinyViT blocks, for example): every parameter shape is exact, but residual connections and
    attention inside the module are not represented in the graph.
    """
    nodes: list[NodeSpec] = []
    described: list[str] = []
    for path, layer in module.named_modules():
        if not path or any(path.startswith(d + ".") for d in described):
            continue
        rule = module_rule(layer)
        if rule is None or rule is sublayer_chain:
            continue
        described.append(path)
        for spec in rule(layer) or []:
            param = f"{path}.{spec.param}" if spec.param else None
            nodes.append(NodeSpec(spec.primitive, param, spec.shape, spec.min_inputs))
    return nodes or None


def register_sublayer_chains(notrace_types: tuple[type, ...]) -> None:
    """Give timm's not-traceable module types without a rule of their own the :func:`sublayer_chain` rule."""
    ruled = registered_module_types()
    new = tuple(t for t in notrace_types if not issubclass(t, ruled))
    if new:
        register_module(*new)(sublayer_chain)
