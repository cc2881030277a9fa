"""Reading a GHN from a local file or folder: safetensors files and folders, and reference checkpoints.

A folder in the Hub layout holds ``config.json`` and ``model.safetensors`` (what
``PyTorchModelHubMixin.save_pretrained`` writes); a ``.safetensors`` file carries its config in
its metadata or in a ``config.json`` beside it; a reference ``.pt`` checkpoint is read only with
``torch.load(weights_only=True)``, and a published GHN-3 pickle only with the restricted unpickler
of :mod:`ghninit.zoo.safe_pickle`. Every failure is a :class:`~ghninit.errors.GHNLoadError` naming
the file. Where the files come from (names, sources, downloads) is :mod:`ghninit.zoo.hub`'s job.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as read_tensors

from ..errors import GHNLoadError
from ..ghn import GHNBase
from ..ghn.config import check_safetensors_header, check_state_shapes, ghn_class
from .cache import WEIGHTS_NAME

CONFIG_NAME = "config.json"


def load_path(path: Path) -> GHNBase:
    """A GHN from a folder in the Hub layout or from a file (by its suffix)."""
    return load_ghn_folder(path) if path.is_dir() else load_ghn_file(path)


def load_ghn_folder(folder: Path) -> GHNBase:
    """Load a folder in the Hub layout with ``GHN2.from_pretrained`` (the mixin), strictly.

    A ``python -m ghninit train --save-dir`` folder loads its ``final/`` GHN.
    """
    if not (folder / CONFIG_NAME).is_file() and (folder / "final" / CONFIG_NAME).is_file():
        folder = folder / "final"
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise GHNLoadError(
            f"{folder}: missing {', '.join(missing)}; a GHN folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(as written by GHN2.save_pretrained or hub/convert_ppuda.py)"
        )
    config = read_config(folder / CONFIG_NAME)
    check_safetensors_header(folder / WEIGHTS_NAME, config, folder)  # before from_pretrained allocates
    cls = ghn_class(config)
    try:
        # the mixin prints "Loading weights from local directory"; a library should not
        with contextlib.redirect_stdout(io.StringIO()):
            ghn = cls.from_pretrained(str(folder), strict=True)
    except (TypeError, RuntimeError, ValueError, NotImplementedError, SafetensorError) as err:
        raise GHNLoadError(f"{folder}: weights do not match a {cls.__name__} of config {config}: {err}") from err
    return ghn


def _check_safetensors(path: Path) -> dict[str, str]:
    """The file's metadata, after checking that its header is complete and covers the whole file."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise GHNLoadError(
            f"{path}: not a readable safetensors file ({err}); the file may be truncated or corrupt"
        ) from err


def load_ghn_file(path: Path) -> GHNBase:
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    if path.suffix in (".pt", ".pth", ".ckpt") and zipfile.is_zipfile(path):  # torch.save's format
        return ghn_from_reference_checkpoint(path)
    if path.suffix in (".pt", ".pth", ".ckpt", ".joblib", ".pkl"):
        # a published GHN-3 file (a joblib pickle named .pt) is read without running its code;
        # anything else goes to torch.load(weights_only=True)
        from .ghn3_weights import load_ghn3_pickle

        try:
            return load_ghn3_pickle(path)
        except (pickle.UnpicklingError, ValueError, RuntimeError) as err:
            if path.suffix in (".joblib", ".pkl"):
                raise GHNLoadError(f"{path}: not loadable as a GHN-3 state dict: {err}") from err
        return ghn_from_reference_checkpoint(path)
    raise GHNLoadError(f"{path}: expected a .safetensors file, a reference .pt checkpoint, a GHN-3 .joblib or a folder")


def _config_json(text: str, where: str) -> dict:
    """A GHN config parsed from JSON text; ``where`` names its origin in the error."""
    try:
        config = json.loads(text)
    except ValueError as err:
        raise GHNLoadError(f"{where} is not valid JSON ({err}); the file may be corrupt") from err
    if not isinstance(config, dict):
        raise GHNLoadError(f"{where}: expected a JSON object of GHN arguments, got {config!r}")
    return config


def read_config(path: Path) -> dict:
    """The GHN config in a ``config.json`` file (errors name the file)."""
    try:
        text = path.read_text()
    except OSError as err:
        raise GHNLoadError(f"{path}: not readable ({err})") from err
    return _config_json(text, str(path))


def load_safetensors_file(path: Path) -> GHNBase:
    metadata = _check_safetensors(path)
    if "config" in metadata:
        config = _config_json(metadata["config"], f"{path}: the 'config' entry of its safetensors metadata")
    elif (path.parent / CONFIG_NAME).is_file():
        config = read_config(path.parent / CONFIG_NAME)
    else:
        raise GHNLoadError(
            f"{path}: safetensors metadata has no 'config' key and there is no {CONFIG_NAME} beside it; "
            "save GHNs with ghninit (GHN2.save_pretrained)"
        )
    check_safetensors_header(path, config)
    try:
        state = read_tensors(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GHNLoadError(f"{path}: not a readable safetensors file ({err}); the file may be truncated") from err
    return _build(config, state, path)


def ghn_from_reference_checkpoint(path: str | os.PathLike) -> GHNBase:
    """Load an official reference checkpoint (``{'state_dict', 'config', 'epoch'}``) without unpickling code.

    Only ``torch.load(..., weights_only=True)`` is used: tensors and plain containers, no code.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = refused_type(err)
        what = f"it holds an object of type `{refused}`, which" if refused else "it"
        raise GHNLoadError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint: {what} torch.load(weights_only=True) "
            f"refuses ({type(err).__name__}: {unpickler_reason(err)}). ghninit never unpickles other types. "
            "Fix: if you trust the file, re-save it elsewhere as {'state_dict': tensors, 'config': plain dict}."
        ) from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "config"} <= checkpoint.keys():
        raise GHNLoadError(f"{path}: expected a dict with 'state_dict' and 'config' (a reference GHN checkpoint)")
    return _build(dict(checkpoint["config"]), checkpoint["state_dict"], path)


def _build(config: dict, state: dict, source: object) -> GHNBase:
    config = check_state_shapes(config, state, source)
    cls = ghn_class(config)
    try:
        ghn = cls(**config)
        ghn.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError, NotImplementedError) as err:
        raise GHNLoadError(f"{source}: weights do not match a {cls.__name__} of config {config}: {err}") from err
    return ghn


def refused_type(err: BaseException) -> str | None:
    """The type ``torch.load(weights_only=True)`` refused, from its error message (None if not said)."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def unpickler_reason(err: BaseException) -> str:
    """The line of a ``weights_only`` error that says why (without torch's advice to unpickle anyway)."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". Please use")[0]
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
