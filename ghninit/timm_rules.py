"""Graph rules for timm layers that torch.fx cannot trace, registered when timm is in use.

timm marks some modules as not traceable (shape-dependent control flow); they are kept as
leaves. Where such a module is a plain chain of layers, a rule here describes it, so its
parameters are predicted instead of keeping their own initialisation.
"""

from __future__ import annotations

import torch.nn as nn

from .primitives import NodeSpec, module_rule, register_module


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
