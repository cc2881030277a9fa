"""Building the model a command names: a timm name, ``torchvision:NAME`` or ``package.module:callable``.

The model is built the way its library builds it (``timm.create_model``, ``torchvision.models.get_model``
or the callable itself) with the options a training script passes (number of classes, input
channels, image size, extra keyword arguments), optionally under ``torch.device("meta")`` so that
building costs nothing. An unknown name raises :class:`LookupError` listing the closest known names.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn

#: Prefixes that timm itself resolves (``hf-hub:timm/resnet50.a1_in1k``); ``timm:`` is stripped.
_TIMM_PREFIXES = ("hf-hub", "hf_hub", "local-dir")


@dataclass
class ModelSpec:
    """What to build: ``library`` (``"timm"``, ``"torchvision"`` or ``"callable"``), ``name`` and keyword arguments."""

    library: str
    name: str
    kwargs: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name if self.library == "timm" else f"{self.library}:{self.name}"


def parse_kwargs(items: list[str] | None) -> dict:
    """``["drop_rate=0.1", "global_pool='avg'"]`` -> dict; values are Python literals, else strings (as timm's ``--model-kwargs``)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"model keyword argument {item!r} is not KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def parse_model(text: str, kwargs: dict | None = None) -> ModelSpec:
    """Which library a MODEL argument names (see the module docstring)."""
    prefix, sep, rest = text.partition(":")
    if not sep or prefix in _TIMM_PREFIXES:
        return ModelSpec("timm", text, dict(kwargs or {}))
    if prefix == "timm":
        return ModelSpec("timm", rest, dict(kwargs or {}))
    if prefix == "torchvision":
        return ModelSpec("torchvision", rest, dict(kwargs or {}))
    return ModelSpec("callable", text, dict(kwargs or {}))


def close_matches(name: str, known: list[str], n: int = 8) -> list[str]:
    """Known names close to ``name``: similar spellings, then names containing it (as ``timm.list_models('*name*')``)."""
    containing = [k for k in known if name.lower() in k.lower()]
    similar = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
    return list(dict.fromkeys(similar + containing[:n]))[:n]


def _unknown(library: str, name: str, known: list[str], hint: str) -> LookupError:
    matches = close_matches(name, known)
    near = f" Close matches: {', '.join(matches)}." if matches else ""
    return LookupError(f"unknown {library} model '{name}'.{near} {hint}")


def build_model(spec: ModelSpec, meta: bool = False) -> nn.Module:
    """Build ``spec`` (on the meta device when ``meta``).

    Raises:
        LookupError: an unknown timm/torchvision name (with close matches) or callable.
        TypeError: the callable does not return an ``nn.Module``.
    """
    builder = _builder(spec)
    if not meta:
        return builder()
    with torch.device("meta"):
        return builder()


def _builder(spec: ModelSpec):
    if spec.library == "timm":
        import timm

        if not timm.is_model(spec.name) and not spec.name.startswith(_TIMM_PREFIXES):
            raise _unknown(
                "timm",
                spec.name,
                timm.list_models(),
                "See timm.list_models('*pattern*'); torchvision models: torchvision:NAME.",
            )
        return lambda: timm.create_model(spec.name, pretrained=False, **spec.kwargs)
    if spec.library == "torchvision":
        import torchvision

        known = torchvision.models.list_models()
        if spec.name not in known:
            raise _unknown("torchvision", spec.name, known, "See torchvision.models.list_models().")
        return lambda: torchvision.models.get_model(spec.name, weights=None, **spec.kwargs)
    module_name, _, attr = spec.name.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise LookupError(f"cannot import module '{module_name}' of '{spec.name}': {err}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise LookupError(f"module '{module_name}' has no attribute '{attr}' (from '{spec.name}')")
        target = getattr(target, part)
    if not callable(target):
        raise LookupError(f"'{spec.name}' is not callable")

    def build() -> nn.Module:
        model = target(**spec.kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"'{spec.name}' returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model arguments shared by ``init`` and ``graph``."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="timm name (resnet50), torchvision:NAME (torchvision:resnet50) or package.module:callable",
    )
    parser.add_argument("--num-classes", type=int, help="classifier outputs (as timm's train.py --num-classes)")
    parser.add_argument("--in-chans", type=int, help="input channels (timm models; as train.py --in-chans)")
    parser.add_argument("--img-size", type=int, help="input size for models whose parameters depend on it (timm ViTs)")
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more keyword arguments for the constructor (as timm's train.py --model-kwargs)",
    )


def spec_from_args(args) -> ModelSpec:
    """The :class:`ModelSpec` of parsed ``add_model_arguments`` arguments."""
    kwargs = parse_kwargs(args.model_kwargs)
    spec = parse_model(args.model, kwargs)
    if args.num_classes is not None:
        spec.kwargs["num_classes"] = args.num_classes
    for key in ("in_chans", "img_size"):
        value = getattr(args, key)
        if value is not None:
            if spec.library != "timm":
                raise ValueError(f"--{key.replace('_', '-')} is for timm models; pass it with --model-kwargs to others")
            spec.kwargs[key] = value
    return spec
