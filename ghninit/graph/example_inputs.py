"""Example inputs inferred from a model, for tracing with an example input when symbolic tracing fails.

The model says what it takes where it can: timm's ``pretrained_cfg["input_size"]``, a Hugging Face
``config`` (``image_size``, ``num_channels``, ``main_input_name``), torchvision's detectors (a list of
images, resized by their own transform) and optical-flow models (two images). Otherwise a model
whose first layer is a 2-D convolution gets one image of 224 x 224. The tensors are made on the
device and in the dtype of the model's parameters, so a model on the ``meta`` device needs no
memory. Detectors are run at a small size (their transform's resize is lowered while tracing): the
graph does not depend on the image size.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import TraceError

_DETECTION_SIZE = 128  # side of the example image a torchvision detector is traced at
_PROPOSALS = 32  # region proposals kept per image while tracing a torchvision two-stage detector


def example_call(example_inputs: Any) -> tuple[tuple, dict]:
    """``example_inputs`` as ``(args, kwargs)`` for ``model(*args, **kwargs)``.

    A mapping is the keyword arguments, a tuple the positional arguments, anything else (a tensor,
    a list of images for a torchvision detector) the one positional argument.
    """
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    return (example_inputs,), {}


def normalize_inputs(model: nn.Module, example_inputs: Any) -> dict[str, Any]:
    """Map ``example_inputs`` to the names of ``model.forward``'s parameters (``inspect.Signature.bind``).

    ``example_inputs`` is a tuple of positional arguments, a dict of keyword arguments, or a single
    argument (a tensor, or a list of images for a torchvision detector). Keyword arguments that
    ``forward`` takes through ``**kwargs`` keep their own names.

    Raises:
        TypeError: naming the arguments ``forward`` does not take.
    """
    signature = inspect.signature(model.forward)
    params = list(signature.parameters.values())
    args, kwargs = example_call(example_inputs)
    unknown = [k for k in kwargs if k not in signature.parameters]
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in params):
        raise TypeError(
            f"example_inputs names {unknown}, which {type(model).__name__}.forward does not take "
            f"(its arguments: {[p.name for p in params]})"
        )
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(positional):
        raise TypeError(
            f"example_inputs has {len(args)} positional values but {type(model).__name__}.forward "
            f"takes {len(positional)} ({[p.name for p in positional]})"
        )
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"example_inputs do not fit {type(model).__name__}.forward{signature}: {err}") from err
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind == inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _image(shape: tuple[int, ...], model: nn.Module) -> torch.Tensor:
    device, dtype = _device_dtype(model)
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    return torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)


def _hf_config_size(config: Any) -> tuple[int, int, int] | None:
    for cfg in (config, getattr(config, "vision_config", None), getattr(config, "backbone_config", None)):
        if cfg is None:
            continue
        size = getattr(cfg, "image_size", None)
        channels = getattr(cfg, "num_channels", None)
        if size is None and channels is None:
            continue
        if isinstance(size, dict):  # {"height": h, "width": w} or {"shortest_edge": s}
            size = (size.get("height"), size.get("width")) if "height" in size else size.get("shortest_edge")
        if isinstance(size, list | tuple):
            h, w = int(size[0]), int(size[-1])
        else:
            h = w = int(size) if size else 224
        return int(channels or 3), h, w
    return None


def _is_torchvision(model: nn.Module, names: tuple[str, ...]) -> bool:
    return any(type(model).__module__.startswith(f"torchvision.models.{n}") for n in names)


def is_torchvision_detector(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's detection models (it takes a list of images)."""
    return _is_torchvision(model, ("detection",)) and hasattr(model, "transform")


def infer_example_inputs(model: nn.Module) -> Any:
    """A sensible example input for ``model``: a tuple of positional arguments or a dict of keyword ones.

    Raises:
        TraceError: when the model does not say what it takes; pass ``example_inputs=`` then.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return (_image((1, *cfg["input_size"]), model),)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):  # Hugging Face transformers
        size = _hf_config_size(config)
        name = getattr(model, "main_input_name", "pixel_values")
        if size is not None and name == "pixel_values":
            return {name: _image((1, *size), model)}
    if is_torchvision_detector(model):
        return ([_image((3, _DETECTION_SIZE, _DETECTION_SIZE), model)],)
    if _is_torchvision(model, ("optical_flow",)):
        return (_image((1, 3, 128, 128), model), _image((1, 3, 128, 128), model))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)), None)
    if isinstance(first, nn.Conv2d):
        return (_image((1, first.in_channels, 224, 224), model),)
    raise TraceError(
        f"{type(model).__name__}: cannot guess an example input (no timm pretrained_cfg, Hugging Face "
        "config with image_size, or first Conv2d layer). Fix: pass one, e.g. "
        "ghninit.initialize(model, ..., example_inputs=torch.randn(1, 3, 224, 224)) or a tuple of "
        "forward's positional arguments, or a dict of its keyword arguments."
    )


@contextlib.contextmanager
def small_detection_inputs(model: nn.Module) -> Iterator[None]:
    """While tracing, a torchvision detector's transform resizes images to :data:`_DETECTION_SIZE` and its
    region proposal network keeps :data:`_PROPOSALS` proposals.

    The graph is the same at any size and with any number of proposals; the example run costs much
    less than at 800 pixels with 1,000 proposals.
    """
    saved: list[tuple[object, str, object]] = []
    if _is_torchvision(model, ("detection",)):
        transform, rpn = getattr(model, "transform", None), getattr(model, "rpn", None)
        changes = [(transform, "min_size", (_DETECTION_SIZE,)), (transform, "max_size", _DETECTION_SIZE)]
        # fewer proposals for the box head (the graph is the same with any number above zero)
        changes += [
            (rpn, k, {"training": _PROPOSALS, "testing": _PROPOSALS}) for k in ("_pre_nms_top_n", "_post_nms_top_n")
        ]
        for obj, name, value in changes:
            if obj is not None and hasattr(obj, name):
                saved.append((obj, name, getattr(obj, name)))
                setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
