"""Checking an untrusted GHN config against its weights before anything is allocated.

A GHN file from the Hub or a colleague carries its own config (``config.json``, safetensors
metadata, or the ``config`` of a reference ``.pt``), and the config decides how much memory the
GHN takes: ``"hid": 100000`` asks for more than any machine has. So loading goes in three steps:
:func:`validate_config` checks the keys, types and ranges; :func:`expected_shapes` builds the GHN
on the ``meta`` device (shapes only, no memory) to learn every tensor it needs; and
:func:`check_safetensors_header` / :func:`check_state_shapes` compare those with what the file
holds (safetensors reads its header without the data). Only a file that matches is loaded, so a
mismatched one fails in milliseconds with an error naming the first differing tensor.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping

import torch
from safetensors import SafetensorError, safe_open

from ..errors import GHNLoadError
from .model import GHN2

IGNORED_KEYS = ("debug_level", "pretrained")  # written by the reference implementations; no effect on weights


def _int_in(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {type(value).__name__} {value!r}"
        if not low <= value <= high:
            return f"{value} is outside [{low}, {high}]"
        return None

    return check


def _one_of(*choices: str) -> Callable[[object], str | None]:
    return lambda value: None if value in choices else f"expected one of {', '.join(map(repr, choices))}, got {value!r}"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _max_shape(value: object) -> str | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return f"expected 4 integers [out, in, height, width], got {value!r}"
    for i, (item, check) in enumerate(zip(value, (_int_in(1, 1024), _int_in(1, 1024), _int_in(1, 64), _int_in(1, 64)))):
        if (problem := check(item)) is not None:
            return f"dimension {i}: {problem}"
    return None


# Ranges are generous (the published GHNs use hid 32, max_shape up to (64, 64, 16, 16), 1000
# classes); they keep a hostile config from asking for absurd sizes before the shape check.
CHECKS: dict[str, Callable[[object], str | None]] = {
    "max_shape": _max_shape,
    "num_classes": _int_in(1, 100_000),
    "hypernet": _one_of("gatedgnn", "mlp", "graphormer"),
    "decoder": _one_of("conv"),
    "weight_norm": _boolean,
    "ve": _boolean,
    "layernorm": _boolean,
    "hid": _int_in(4, 4096),
    "layers": _int_in(1, 128),  # GHN-3 only
    "heads": _int_in(1, 128),
    "is_ghn2": _boolean,
}


def _fail(message: str):
    raise GHNLoadError(message)


def validate_config(config: object, source: object, cls: type = GHN2) -> dict:
    """The config as keyword arguments of ``cls``, after checking keys, types and ranges.

    Keys are the parameters of ``cls.__init__`` (``debug_level`` of reference checkpoints is
    dropped). Raises :class:`ghninit.GHNLoadError` naming the source, the key and the problem.
    """
    if not isinstance(config, Mapping):
        _fail(f"{source}: the GHN config must be a JSON object of {cls.__name__} arguments, got {config!r:.200}")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    config = {k: v for k, v in config.items() if k not in IGNORED_KEYS}
    unknown = [k for k in config if k not in known]
    if unknown:
        _fail(
            f"{source}: unknown GHN config key(s) {', '.join(map(repr, unknown))}; a {cls.__name__} config has "
            f"{', '.join(known)}. The file is not a ghninit GHN, or was made by a newer version."
        )
    for key, value in config.items():
        check = CHECKS.get(key)
        problem = check(value) if check else None
        if problem:
            _fail(f"{source}: GHN config '{key}': {problem}. The config is damaged or not a {cls.__name__} config.")
    return config


def expected_shapes(config: Mapping, cls: type = GHN2) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state dict of ``cls(**config)``, built on the meta device."""
    with torch.device("meta"):
        ghn = cls(**config)
    return {name: tuple(t.shape) for name, t in ghn.state_dict().items()}


def ghn_class(config: object) -> type:
    """:class:`GHN3` for a GHN-3 config, else :class:`GHN2`."""
    from .ghn3 import GHN3, is_ghn3_config

    return GHN3 if isinstance(config, Mapping) and is_ghn3_config(config) else GHN2


def _compare(expected: Mapping[str, tuple], found: Mapping[str, tuple], config: Mapping, source: object) -> None:
    what = f"a {ghn_class(config).__name__} with config {dict(config)}"
    for name, shape in expected.items():
        if name not in found:
            _fail(
                f"{source}: tensor '{name}' (shape {shape}) of {what} is missing from "
                "the weights; the weights do not match the config"
            )
        if tuple(found[name]) != shape:
            _fail(
                f"{source}: tensor '{name}' has shape {tuple(found[name])} in the weights, but {what} needs "
                f"{shape}; the weights do not match the config"
            )
    extra = [name for name in found if name not in expected]
    if extra:
        _fail(
            f"{source}: the weights hold tensor(s) {what} does not have: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; the weights do not match the config"
        )


def check_safetensors_header(path: str | os.PathLike, config: object, source: object = None) -> dict:
    """Validate ``config`` and compare its tensors with the header of the safetensors file at ``path``.

    Reads only the header (no tensor data). Returns the validated config.
    """
    source = path if source is None else source
    cls = ghn_class(config)
    config = validate_config(config, source, cls)
    expected = expected_shapes(config, cls)
    try:
        with safe_open(str(path), "pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        _fail(f"{path}: not a readable safetensors file ({err}); the file may be truncated or corrupt")
    _compare(expected, found, config, source)
    return config


def check_state_shapes(config: object, state: object, source: object) -> dict:
    """Validate ``config`` and compare its tensors with a loaded state dict; returns the validated config."""
    cls = ghn_class(config)
    config = validate_config(config, source, cls)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        _fail(f"{source}: the weights must be a mapping of tensor names to tensors")
    _compare(expected_shapes(config, cls), {k: tuple(v.shape) for k, v in state.items()}, config, source)
    return config
