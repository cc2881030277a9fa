"""How a model's parameters are set before training in the recipe benchmarks: the starts.

:func:`build_model` builds an architecture as a timm user does (its own default initialisation);
:func:`make_start` sets one start on it: ``default``, ``he``, ``ghn``, ``ghn+POSTPROCESS``, or a
GHN start with one group of parameters put back to (or calibrated against) the default start,
``ghn[GROUP=default]``, which ``benchmarks/first_steps.py`` uses to find which parameters cause a
blow-up in the first steps and which ``benchmarks/recipes.py`` can train like any other start.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from .init import ghninit, he_init_

ARCHS = ("resnet18", "vit")
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def build_model(arch: str, num_classes: int = 10) -> nn.Module:
    """A model as a timm user builds it for 32x32 images (its own default initialisation).

    ``resnet18``: ``timm.create_model("resnet18")`` (ImageNet stem; timm zero-initialises the last
    BatchNorm of each block). ``vit``: timm's ``VisionTransformer`` with DeiT-Tiny widths (192, 3
    heads), 6 blocks and 8x8 patches (16 tokens and a class token), small enough to train on CPU.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if arch == "resnet18":
        return timm.create_model("resnet18", num_classes=num_classes)
    if arch == "vit":
        return VisionTransformer(
            img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=num_classes
        )
    raise ValueError(f"unknown architecture {arch!r}: expected one of {ARCHS}")


def apply_start(model: nn.Module, start: str, ghn: Any) -> dict[str, Any] | None:
    """Set the parameters of a freshly built ``model`` for ``start``; returns the report's summary.

    ``default``: as built. ``he``: :func:`he_init_`. ``ghn``: ``ghninit.initialize`` with no
    post-processing. ``ghn+NAME``: ``ghninit.initialize(..., postprocess=NAME)`` for any name
    ``initialize`` accepts (``orth``, ``orth-he``, ...).
    """
    if start == "default":
        return None
    if start == "he":
        he_init_(model)
        return None
    if start == "ghn" or start.startswith("ghn+"):
        post = start.partition("+")[2] or None
        report = ghninit.initialize(model, ghn=ghn, postprocess=post)
        return {
            "postprocess": report.postprocess,
            "predicted_fraction": report.n_params_predicted / max(report.n_params_total, 1),
            "advice": getattr(report, "advice", None),
        }
    raise ValueError(f"unknown start {start!r}: expected default, he, ghn or ghn+POSTPROCESS")


def classifier_of(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` in module order (timm's ``fc`` / ``head``)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _output_std(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, float]:
    stds: dict[str, float] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: stds.__setitem__(n, (o[0] if isinstance(o, tuple) else o).float().std().item())
        )
        for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stds


def calibrate_output_std(model: nn.Module, default: nn.Module, x: torch.Tensor) -> None:
    """Scale each layer (module order) so its output std on ``x`` equals ``default``'s, directions kept."""
    kinds = (nn.Conv2d, nn.Linear, *NORMS)
    names = [n for n, m in model.named_modules() if isinstance(m, kinds) and not n.endswith("out_proj")]
    target = _output_std(default, x, names)
    for name in names:
        ratio = target[name] / max(_output_std(model, x, [name]).get(name, 0.0), 1e-12)
        with torch.no_grad():
            for p in model.get_submodule(name).parameters(recurse=False):
                p.mul_(ratio)


def make_start(arch: str, start: str, ghn: Any, seed: int = 0, batch: torch.Tensor | None = None) -> tuple[nn.Module, dict[str, Any] | None]:
    """Build ``arch`` with ``seed`` and set ``start`` (:func:`apply_start`, or ``ghn[GROUP=default]``).

    Groups: ``classifier``, ``norm`` (every normalisation layer), ``weight-norms`` (each conv/linear
    weight rescaled to the default's norm), ``output-std`` (LSUV-like calibration on ``batch``).
    Returns the model and the GHN report's summary (``None`` for non-GHN starts).
    """
    torch.manual_seed(seed)
    model = build_model(arch)
    if "[" not in start:
        return model, apply_start(model, start, ghn)
    base, what = start[:-1].split("[")
    default = copy.deepcopy(model)
    info = apply_start(model, base, ghn)
    group = what.split("=")[0]
    with torch.no_grad():
        if group == "classifier":
            classifier_of(model).load_state_dict(classifier_of(default).state_dict())
        elif group == "norm":
            for m, d in zip(model.modules(), default.modules()):
                if isinstance(m, NORMS):
                    m.load_state_dict(d.state_dict())
        elif group == "output-std":
            calibrate_output_std(model, default, batch)
        elif group == "weight-norms":
            head = classifier_of(model)
            for m, d in zip(model.modules(), default.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not head:
                    m.weight.mul_(d.weight.norm() / m.weight.norm().clamp_min(1e-12))
        else:
            raise ValueError(f"unknown group in {start!r}: classifier, norm, weight-norms or output-std")
    return model, info


