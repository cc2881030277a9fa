"""Building the model a command names: a timm name, ``torchvision:NAME`` or ``package.module:callable``.

The model is built the way its library builds it (``timm.create_model``, ``torchvision.models.get_model``
or the callable itself) with the options a training script passes (number of classes, input
channels, image size, extra keyword arguments), optionally under ``torch.device("meta")`` so that
building costs nothing. The input size (``--img-size``/``--input-size``, as timm's ``train.py``)
is accepted for every model: it reaches the constructor only where the constructor takes it
(``img_size``; also torchvision's ``image_size``), and it is the size of the example input a
model is traced on when symbolic tracing fails. An unknown name raises :class:`LookupError`
listing the closest known names. torch is imported when a model is built, not with this module
(``init --help`` does not need it).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch.nn as nn

#: Prefixes that timm itself resolves (``hf-hub:timm/resnet50.a1_in1k``); ``timm:`` is stripped.
_TIMM_PREFIXES = ("hf-hub", "hf_hub", "local-dir")


@dataclass
class ModelSpec:
    """What to build: ``library`` (``"timm"``, ``"torchvision"`` or ``"callable"``), ``name`` and keyword arguments."""

    library: str
    name: str
    kwargs: dict = field(default_factory=dict)
    #: ``(channels, height, width)`` of the input, from ``--img-size``/``--input-size``; ``None``: the model's default.
    input_size: tuple[int, int, int] | None = None
    #: the constructor keyword the image size was passed as (``"img_size"``, ``"image_size"``), or ``None``.
    size_keyword: str | None = None

    def describe_input(self) -> str | None:
        """One line on the input size and where it went, for the log and the report; ``None`` without one."""
        if self.input_size is None:
            return None
        size = "x".join(map(str, self.input_size))
        if self.size_keyword:
            return f"input {size}: passed to the constructor as {self.size_keyword}={self.kwargs[self.size_keyword]!r}"
        return f"input {size}: the constructor takes no image size, so it is used for the example input only"

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

    A timm model built with an input size gets it in ``pretrained_cfg["input_size"]`` (where timm
    keeps a model's input size and ghninit looks for the example input), since timm itself leaves
    the default there.

    Raises:
        LookupError: an unknown timm/torchvision name (with close matches) or callable.
        TypeError: the callable does not return an ``nn.Module``.
    """
    import torch

    builder = _builder(spec)
    if meta:
        with torch.device("meta"):
            model = builder()
    else:
        model = builder()
    cfg = getattr(model, "pretrained_cfg", None)
    if spec.input_size is not None and isinstance(cfg, dict):
        model.pretrained_cfg = model.default_cfg = {**cfg, "input_size": spec.input_size}
    return model


def accepted_keyword(cls: type, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that ``cls(...)`` takes by keyword, or ``None``.

    Looks at ``cls.__init__`` and, while an ``__init__`` only passes ``**kwargs`` on, at its base
    classes' (timm's ``VisionTransformerDistilled`` passes them to ``VisionTransformer``).
    """
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):  # a builtin without a signature
            return None
        found = _keyword(params, names)
        if found or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return found
    return None


def _keyword(params, names: tuple[str, ...]) -> str | None:
    """The first of ``names`` among the ``inspect.Parameter`` mapping ``params`` that can be passed by keyword."""
    for name in names:
        if name in params and params[name].kind in (params[name].POSITIONAL_OR_KEYWORD, params[name].KEYWORD_ONLY):
            return name
    return None


def _size_keyword(spec: ModelSpec) -> str | None:
    """The image-size keyword the constructor of ``spec``'s model takes: from a callable's own signature, else from
    the class of a model built without it on the meta device (timm and torchvision builders take ``**kwargs``)."""
    names = ("img_size",) if spec.library == "timm" else ("img_size", "image_size")
    given = [n for n in names if n in spec.kwargs]
    if given:
        return given[0]
    if spec.library == "callable":
        target = _callable(spec.name)
        if isinstance(target, type):
            return accepted_keyword(target, names)
        params = inspect.signature(target).parameters
        found = _keyword(params, names)
        if found or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return found
    probe = ModelSpec(spec.library, spec.name, dict(spec.kwargs))
    try:
        model = build_model(probe, meta=True)
    except (RuntimeError, NotImplementedError, ValueError):  # a constructor that computes on its tensors
        model = build_model(probe)
    return accepted_keyword(type(model), names)


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
    target = _callable(spec.name)

    def build() -> nn.Module:
        import torch.nn as nn

        model = target(**spec.kwargs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"'{spec.name}' returned {type(model).__name__}, not an nn.Module")
        return model

    return build


def _callable(text: str):
    """The object ``package.module:attr`` names; raises ``LookupError`` when it is missing or not callable."""
    module_name, _, attr = text.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise LookupError(f"cannot import module '{module_name}' of '{text}': {err}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise LookupError(f"module '{module_name}' has no attribute '{attr}' (from '{text}')")
        target = getattr(target, part)
    if not callable(target):
        raise LookupError(f"'{text}' is not callable")
    return target


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model arguments shared by ``init`` and ``graph``."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="timm name (resnet50), torchvision:NAME (torchvision:resnet50) or package.module:callable",
    )
    parser.add_argument("--num-classes", type=int, help="classifier outputs (as timm's train.py --num-classes)")
    parser.add_argument("--in-chans", type=int, help="input channels (timm models; as train.py --in-chans)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--img-size",
        type=int,
        metavar="N",
        help="input image size (as train.py --img-size): passed to the constructor where it takes img_size (ViTs), "
        "and the size of the example input",
    )
    size.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="all input dimensions (as train.py --input-size 3 224 224); C is the input channels of timm models",
    )
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more keyword arguments for the constructor (as timm's train.py --model-kwargs)",
    )


def spec_from_args(args) -> ModelSpec:
    """The :class:`ModelSpec` of parsed ``add_model_arguments`` arguments.

    With ``--img-size``/``--input-size``, finds out whether the constructor takes the image size
    (which may build the model once on the meta device).

    Raises:
        ValueError: contradictory options, or input channels for a model that is not timm's.
        LookupError: an unknown model (see :func:`build_model`).
    """
    kwargs = parse_kwargs(args.model_kwargs)
    spec = parse_model(args.model, kwargs)
    if args.num_classes is not None:
        spec.kwargs["num_classes"] = args.num_classes
    input_size = getattr(args, "input_size", None)
    in_chans = args.in_chans
    if input_size is not None:
        if in_chans is not None and in_chans != input_size[0]:
            raise ValueError(f"--in-chans {in_chans} contradicts --input-size {' '.join(map(str, input_size))}")
        if spec.library == "timm" or input_size[0] != 3:
            in_chans = input_size[0]  # as train.py: the channels of --input-size are the model's in_chans
    elif args.img_size is not None:
        input_size = (in_chans or spec.kwargs.get("in_chans", 3), args.img_size, args.img_size)
    if in_chans is not None:
        if spec.library != "timm":
            raise ValueError("input channels are for timm models (in_chans); pass them to others with --model-kwargs")
        spec.kwargs["in_chans"] = in_chans
    if input_size is None:
        return spec
    spec.input_size = tuple(int(v) for v in input_size)
    keyword = _size_keyword(spec)
    if keyword is not None:
        height, width = spec.input_size[1:]
        value = height if height == width else (height, width)
        if keyword in spec.kwargs and spec.kwargs[keyword] not in (value, (height, width), [height, width]):
            raise ValueError(
                f"--model-kwargs {keyword}={spec.kwargs[keyword]!r} contradicts the input size {height}x{width}"
            )
        spec.kwargs.setdefault(keyword, value)
        spec.size_keyword = keyword
    return spec


def check_destination(path: Path, force: bool) -> Path:
    """The report path (``PATH.json``) for an output at ``path`` (a file or a DCP folder).

    Raises:
        FileNotFoundError: the parent folder does not exist.
        FileExistsError: ``path`` or its report exists and ``force`` is not set.
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"{path}: folder '{path.parent}' does not exist; create it first (mkdir -p {path.parent})"
        )
    report_path = path.with_name(path.name + ".json")
    for p in (path, report_path):
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass --force to overwrite it, or choose another -o")
    return report_path
