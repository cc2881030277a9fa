"""Example inputs inferred from a model, for tracing with an example input when symbolic tracing fails.

The model says what it takes where it can: timm's ``pretrained_cfg["input_size"]``, a Hugging Face
``config`` (its ``main_input_name`` made from the config, generic over families: tokens below
``vocab_size``, ``pixel_values`` of ``num_channels`` x ``image_size`` with ``num_frames`` for video,
a raw waveform, a spectrogram of ``num_mel_bins``; ``decoder_input_ids`` for an encoder-decoder),
torchvision's detectors (a list of images, resized by their own transform) and optical-flow models
(two images). Otherwise a model whose first layer is a 2-D convolution gets one image of 224 x 224.
Every guess comes with a description of what was guessed, from what. :func:`guess_argument` guesses
one more ``forward`` argument from the layer it would feed (:mod:`~ghninit.graph.every_input`). The tensors are made on the
device and in the dtype of the model's parameters, so a model on the ``meta`` device needs no
memory. Detectors are run at a small size (their transform's resize is lowered while tracing): the
graph does not depend on the image size.
"""

from __future__ import annotations

import contextlib
import inspect
import math
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

    The first of :func:`example_input_candidates`.

    Raises:
        TraceError: when the model does not say what it takes; pass ``example_inputs=`` then.
    """
    candidates = example_input_candidates(model)
    if not candidates:
        raise TraceError(cannot_guess_message(model))
    return candidates[0][0]


def example_input_candidates(model: nn.Module) -> list[tuple[Any, str]]:
    """Example inputs for ``model``, each with a description of what was guessed, most likely first.

    Several only where the model's own description leaves a choice (the layout of a Hugging Face
    model's ``input_features``); the caller traces with the first one the model accepts. Empty
    when the model does not say what it takes.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        shape = (1, *cfg["input_size"])
        return [((_image(shape, model),), f"one image {shape} (timm pretrained_cfg['input_size'])")]
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):  # Hugging Face transformers
        candidates = hf_input_candidates(model)
        if candidates:
            return candidates
    if is_torchvision_detector(model):
        shape = (3, _DETECTION_SIZE, _DETECTION_SIZE)
        return [(([_image(shape, model)],), f"a list of one image {shape} (a torchvision detector)")]
    if _is_torchvision(model, ("optical_flow",)):
        pair = (_image((1, 3, 128, 128), model), _image((1, 3, 128, 128), model))
        return [(pair, "two images (1, 3, 128, 128) (a torchvision optical-flow model)")]
    first = next(
        ((path, m) for path, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)), None
    )
    if first is not None and isinstance(first[1], nn.Conv2d):
        shape = (1, first[1].in_channels, 224, 224)
        return [((_image(shape, model),), f"one image {shape} (the first layer, '{first[0]}', is a Conv2d)")]
    return []


def cannot_guess_message(model: nn.Module) -> str:
    """Why no example input could be inferred for ``model``, and how to give one."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        name = getattr(model, "main_input_name", None)
        what = (
            f"a Hugging Face model whose main input '{name}' could not be made from its config "
            f"({type(config).__name__} has none of {', '.join(_HF_NEEDS.get(name, ('image_size', 'vocab_size')))})"
        )
        example = f"example_inputs={{'{name or 'input_ids'}': ...}}"
    else:
        what = "no timm pretrained_cfg, Hugging Face config or first Conv2d layer says what it takes"
        example = "example_inputs=torch.randn(1, 3, 224, 224)"
    return (
        f"{type(model).__name__}: cannot guess an example input ({what}). Fix: pass one, e.g. "
        f"ghninit.initialize(model, ..., {example}), a tuple of forward's positional arguments, "
        "or a dict of its keyword arguments."
    )


# Hugging Face inputs made from a config, by argument name
_HF_TOKENS = ("input_ids", "decoder_input_ids")
_HF_NEEDS = {
    "input_ids": ("vocab_size",),
    "decoder_input_ids": ("vocab_size",),
    "pixel_values": ("image_size", "num_channels"),
    "input_values": ("(raw audio: any length)",),
    "input_features": ("num_mel_bins", "feature_size", "input_feat_per_channel"),
}
_HF_SUBCONFIGS = ("text_config", "vision_config", "audio_config", "encoder", "decoder", "backbone_config")
_SEQUENCE = 16  # tokens in an inferred text input
_AUDIO_FRAMES = 32  # frames of an inferred raw waveform (samples: the feature encoder's total stride times this)


def _config_int(config: Any, names: tuple[str, ...], prefer: tuple[str, ...] = ()) -> tuple[int, str] | None:
    """The first positive int among ``names`` on ``config`` or its sub-configs, with where it was found."""
    subs = [s for s in prefer if s in _HF_SUBCONFIGS] + [s for s in _HF_SUBCONFIGS if s not in prefer]
    for where, cfg in [("config", config)] + [(f"config.{s}", getattr(config, s, None)) for s in subs]:
        if cfg is None or not hasattr(cfg, "to_dict"):
            continue
        for n in names:
            v = getattr(cfg, n, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v, f"{where}.{n}"
    return None


def _accepted(model: nn.Module) -> set[str]:
    """Names of ``forward``'s arguments."""
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def _tokens(shape: tuple[int, ...], vocab: int, model: nn.Module) -> torch.Tensor:
    device, _ = _device_dtype(model)
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=torch.long)
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0)).to(device)


def _hf_tokens(model: nn.Module, config: Any, prefer: tuple[str, ...] = ("text_config",)) -> tuple[Any, str] | None:
    vocab = _config_int(config, ("vocab_size",), prefer)
    if vocab is None:
        return None
    longest = _config_int(config, ("max_position_embeddings", "n_positions", "max_target_positions"), prefer)
    length = min(_SEQUENCE, longest[0]) if longest else _SEQUENCE
    return _tokens((1, length), vocab[0], model), f"int64 (1, {length}) in [0, {vocab[0]}) from {vocab[1]}"


def _hf_values(model: nn.Module, name: str) -> list[tuple[Any, str]]:
    """Values for the Hugging Face input ``name`` made from ``model.config``, each with its description."""
    config = model.config
    if name in _HF_TOKENS:
        made = _hf_tokens(model, config, ("decoder", "text_config") if name.startswith("decoder") else ("text_config",))
        return [made] if made else []
    if name == "pixel_values":
        size = _hf_config_size(config)
        if size is None:
            return []
        frames = _config_int(config, ("num_frames",), ("vision_config",))
        if frames:  # a video model: (batch, time, channels, height, width)
            shape = (1, frames[0], *size)
            return [(_image(shape, model), f"float {shape} from config image_size, num_channels and num_frames")]
        return [(_image((1, *size), model), f"float {(1, *size)} from config image_size and num_channels")]
    if name == "input_values":  # raw audio (long enough for the feature encoder's strides), or a spectrogram
        strides = getattr(config, "conv_stride", None)
        samples = math.prod(strides) * _AUDIO_FRAMES if strides else 16000
        waveform = [(_image((1, samples), model), f"float (1, {samples}) (a raw waveform)")]
        spectrogram = _hf_values(model, "input_features")
        return waveform + spectrogram if strides or not spectrogram else spectrogram + waveform
    if name == "input_features":  # spectrogram: (mel, time) or (time, mel); the model accepts one
        mel = _config_int(config, ("num_mel_bins", "feature_size", "input_feat_per_channel"), ("audio_config",))
        if mel is None:
            return []
        lengths = []
        for attr, factor in (("max_length", 1), ("max_source_positions", 2), ("max_source_positions", 1)):
            found = _config_int(config, (attr,), ("audio_config",))
            if found and found[0] * factor not in [n for n, _ in lengths]:
                lengths.append((found[0] * factor, f"{'2 x ' if factor == 2 else ''}{found[1]}"))
        out = []
        for frames, where in lengths or [(100, "100 frames")]:
            for shape in ((1, mel[0], frames), (1, frames, mel[0])):
                out.append((_image(shape, model), f"float {shape} from {mel[1]} and {where}"))
        return out
    return []


def hf_input_candidates(model: nn.Module) -> list[tuple[dict[str, Any], str]]:
    """Keyword inputs for a Hugging Face model made from its config, generic over model families.

    The main input is ``model.main_input_name``: ``input_ids`` (tokens below ``vocab_size``, with an
    ``attention_mask`` of ones when ``forward`` takes one), ``pixel_values`` (``num_channels`` x
    ``image_size``, with ``num_frames`` in front for a video model), ``input_values`` (a raw
    waveform) or ``input_features`` (``num_mel_bins`` by a length from the config, in either
    layout). An encoder-decoder model also gets ``decoder_input_ids``. After those, one candidate
    with every input ``forward`` takes that the config can make (image and text of a CLIP-like
    model).
    """
    name = getattr(model, "main_input_name", "pixel_values")
    accepted = _accepted(model)
    main = _hf_values(model, name) if name in accepted else []
    extras: dict[str, Any] = {}
    notes: list[str] = []
    if name == "input_ids" and main and "attention_mask" in accepted:
        extras["attention_mask"] = torch.ones_like(main[0][0])
        notes.append(f"attention_mask: ones {tuple(main[0][0].shape)}")
    if getattr(model.config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
        decoder = _hf_values(model, "decoder_input_ids")
        if decoder:
            extras["decoder_input_ids"] = decoder[0][0]
            notes.append(f"decoder_input_ids: {decoder[0][1]}")
    out = [({name: v, **extras}, "; ".join([f"{name}: {d}", *notes])) for v, d in main]
    others = [n for n in ("input_ids", "pixel_values", "input_values", "input_features") if n != name]
    more = {n: _hf_values(model, n) for n in others if n in accepted}
    more = {n: v[0] for n, v in more.items() if v}
    if more and (out or not main):
        for inputs, described in out[:1] or [({}, "")]:
            joined = {**inputs, **{n: v for n, (v, _) in more.items()}}
            out.append((joined, "; ".join([d for d in [described] if d] + [f"{n}: {d}" for n, (_, d) in more.items()])))
    return out


def describe_value(value: Any) -> str:
    """``int64 (1, 16)`` for a tensor, the type's name for anything else."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} {tuple(value.shape)}"
    return type(value).__name__


def guess_argument(
    model: nn.Module, name: str, layers: list[tuple[str, nn.Module]], given: Mapping[str, Any]
) -> list[tuple[Any, str]]:
    """Values to try for ``forward``'s argument ``name``, each with a description of the guess.

    A Hugging Face input name is made from the config (:func:`hf_input_candidates`). Otherwise
    the first of ``layers`` (the layers no input reaches yet) says what it takes: an ``Embedding``
    tokens below its size, a convolution an image (as large as a given one), a ``Linear`` a
    vector; then a copy of each tensor already given (a second image).
    """
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict") and name in _HF_NEEDS:
        made = _hf_values(model, name)
        if made:
            return made
    out: list[tuple[Any, str]] = []
    side = next((v.shape[-1] for v in given.values() if isinstance(v, torch.Tensor) and v.dim() == 4), 224)
    for path, layer in layers:
        kind = f"for layer '{path}' ({type(layer).__name__})"
        if isinstance(layer, nn.Embedding):
            shape = (1, _SEQUENCE)
            value = _tokens(shape, layer.num_embeddings, model)
            out.append((value, f"int64 {shape} in [0, {layer.num_embeddings}) {kind}"))
        elif isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            dims = {nn.Conv1d: (64,), nn.Conv2d: (side, side), nn.Conv3d: (8, 64, 64)}[type(layer)]
            shape = (1, layer.in_channels, *dims)
            out.append((_image(shape, model), f"float {shape} {kind}"))
        elif isinstance(layer, nn.Linear):
            shape = (1, layer.in_features)
            out.append((_image(shape, model), f"float {shape} {kind}"))
        else:
            continue
        break  # the first layer that says what it takes
    for other, value in given.items():
        if isinstance(value, torch.Tensor):
            copy = _tokens(tuple(value.shape), 2, model) if not value.is_floating_point() else _image(value.shape, model)
            out.append((copy.to(value.dtype), f"{describe_value(value)} like '{other}'"))
    return out


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
