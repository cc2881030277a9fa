"""Loading a GHN from a known name, a Hugging Face Hub repo, a local folder or a file.

Known names map to a Hub repo and a pinned revision in :data:`KNOWN_GHNS`; downloads and the
cache are huggingface_hub's own (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` behave as it
defines them). Files are read with safetensors; an official reference ``.pt`` checkpoint is read
with ``torch.load(weights_only=True)``, so no pickle is ever executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .ghn import GHN2


class GHNLoadError(RuntimeError):
    """A GHN could not be loaded; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class HubWeights:
    """Where a known GHN lives on the Hub."""

    repo_id: str
    revision: str
    env_override: str  # environment variable that replaces repo_id (forks, mirrors)


KNOWN_GHNS: dict[str, HubWeights] = {
    "imagenet": HubWeights("ghninit/ghn2-imagenet", "main", "GHNINIT_HUB_REPO_IMAGENET"),
    "cifar10": HubWeights("ghninit/ghn2-cifar10", "main", "GHNINIT_HUB_REPO_CIFAR10"),
}


def load_ghn(source: str | os.PathLike, revision: str | None = None, device: str | torch.device = "cpu") -> GHN2:
    """Load a GHN-2.

    Args:
        source: a known name (``"imagenet"``, ``"cifar10"``), a Hub repo id (``"org/repo"``),
            a local folder in the Hub layout (``config.json`` + ``model.safetensors``), a
            ``.safetensors`` file whose metadata key ``config`` holds the config, or an official
            reference ``.pt`` checkpoint.
        revision: Hub branch, tag or commit (known names default to their pinned revision).
        device: where to put the GHN.

    Returns:
        the GHN in eval mode.
    """
    path = Path(source)
    if path.is_dir():
        ghn = GHN2.from_pretrained(str(path))
    elif path.is_file():
        ghn = _load_file(path)
    elif str(source) in KNOWN_GHNS:
        known = KNOWN_GHNS[str(source)]
        ghn = _load_hub(os.environ.get(known.env_override, known.repo_id), revision or known.revision)
    elif "/" in str(source) and not str(source).startswith((".", "/")) and str(source).count("/") == 1:
        ghn = _load_hub(str(source), revision)
    else:
        raise GHNLoadError(
            f"'{source}' is neither a local file or folder, nor a known GHN ({', '.join(KNOWN_GHNS)}), "
            "nor a Hub repo id of the form 'org/name'."
        )
    return ghn.to(device).eval()


def _load_file(path: Path) -> GHN2:
    if path.suffix == ".safetensors":
        return _load_safetensors_file(path)
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return ghn_from_reference_checkpoint(path)
    raise GHNLoadError(f"{path}: expected a .safetensors file, a reference .pt checkpoint or a folder")


def _load_safetensors_file(path: Path) -> GHN2:
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GHNLoadError(f"{path}: not a readable safetensors file ({err}); the file may be truncated") from err
    if "config" not in metadata:
        raise GHNLoadError(f"{path}: safetensors metadata has no 'config' key; save GHNs with ghninit")
    return _build(json.loads(metadata["config"]), state, path)


def ghn_from_reference_checkpoint(path: str | os.PathLike) -> GHN2:
    """Load an official reference checkpoint (``{'state_dict', 'config', 'epoch'}``) without unpickling code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise GHNLoadError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({err}). Only plain tensors and "
            "containers are accepted; convert it with hub/convert_ppuda.py on a trusted machine."
        ) from err
    if not isinstance(checkpoint, dict) or not {"state_dict", "config"} <= checkpoint.keys():
        raise GHNLoadError(f"{path}: expected a dict with 'state_dict' and 'config' (a reference GHN checkpoint)")
    return _build(dict(checkpoint["config"]), checkpoint["state_dict"], path)


def _build(config: dict, state: dict, source: object) -> GHN2:
    config = {k: v for k, v in config.items() if k != "debug_level"}
    try:
        ghn = GHN2(**config)
        ghn.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError) as err:
        raise GHNLoadError(f"{source}: weights do not match a GHN-2 of config {config}: {err}") from err
    return ghn


def _load_hub(repo_id: str, revision: str | None) -> GHN2:
    try:
        return GHN2.from_pretrained(repo_id, revision=revision)
    except Exception as err:  # huggingface_hub raises several types; all mean "could not load"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            "HF_HUB_OFFLINE is set and the cache has no copy: run once online, or set HF_HUB_OFFLINE=0"
            if offline
            else "check the network or HF_ENDPOINT, or pre-download it with "
            f"`huggingface-cli download {repo_id}`"
        )
        raise GHNLoadError(
            f"could not load GHN '{repo_id}' (revision {revision or 'main'}) from the Hugging Face Hub: "
            f"{type(err).__name__}: {err}\nFix: {hint}, or pass a local path to a folder or .safetensors file."
        ) from err
