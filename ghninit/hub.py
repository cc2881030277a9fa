"""Loading a GHN from a shipped or known name, a Hugging Face Hub repo, a local folder or a file.

Shipped names (:data:`SHIPPED_GHNS`, e.g. ``cifar10-mini``) are GHNs trained with this project and
installed with the package (``ghninit/weights/``): they load with no network. Known names map to
a Hub repo and a pinned revision in :data:`KNOWN_GHNS`. A Hub repo in our layout holds
``config.json``, ``model.safetensors`` and a model card ``README.md``: what
``PyTorchModelHubMixin.save_pretrained`` writes. Downloads and the cache are huggingface_hub's own,
so ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_TOKEN`` behave as it
defines them (it reads them when it is imported). Weights are read with safetensors; an official
reference ``.pt`` checkpoint (a local file only) is read with ``torch.load(weights_only=True)``, and
nothing downloaded is ever unpickled.

Environment overrides, for forks and mirrors of the published repos (``NAME`` is the known name in
upper case, e.g. ``IMAGENET``):

- ``GHNINIT_HUB_REPO_NAME``: repo id to use instead of the table's. The pinned revision belongs to
  the table's repo, so with an overridden repo the revision defaults to ``main``.
- ``GHNINIT_HUB_REVISION_NAME``: branch, tag or commit to use instead of the pinned one.

To point at a whole Hub mirror (same repo ids and commits), set ``HF_ENDPOINT`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from huggingface_hub.errors import RemoteEntryNotFoundError
except ImportError:  # huggingface_hub < 1.0: a remote miss is an EntryNotFoundError (checked after local ones)
    from huggingface_hub.errors import EntryNotFoundError as RemoteEntryNotFoundError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .ghn import GHN2
from .ghn.config import check_safetensors_header, check_state_shapes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class GHNLoadError(RuntimeError):
    """A GHN could not be loaded; the message says what was tried and how to fix it."""


@dataclass(frozen=True)
class HubWeights:
    """Where a known GHN lives on the Hub.

    Attributes:
        repo_id: Hub repo in our layout (``config.json`` + ``model.safetensors`` + ``README.md``).
        revision: the pinned revision; a 40-hex commit sha once published, so that downloads are
            reproducible and a cached copy is used without any request.
        sha256: sha256 of ``model.safetensors`` at that revision, checked on every load when set.
        source: the official checkpoint it was converted from.
    """

    repo_id: str
    revision: str
    sha256: str | None
    source: str

    def env(self, name: str, what: str) -> str:
        """Name of the environment variable overriding ``what`` (``REPO`` or ``REVISION``) of ``name``."""
        return f"GHNINIT_HUB_{what}_{name.upper()}"


# The one table of published GHNs. After `hub/publish.py` uploads a converted checkpoint it prints
# the commit sha and the sha256 to pin here (see hub/README.md). Until the official repos are
# published and pinned, the revision is the branch "main" and no sha256 is checked.
KNOWN_GHNS: dict[str, HubWeights] = {
    "imagenet": HubWeights("ghninit/ghn2-imagenet", "main", None, "ghn2_imagenet.pt"),
    "cifar10": HubWeights("ghninit/ghn2-cifar10", "main", None, "ghn2_cifar10.pt"),
}


# GHNs shipped as package data: ``weights/<name>.safetensors`` (config in its metadata) and
# ``weights/<name>.json`` (its sha256 and how it was trained and evaluated).
SHIPPED_GHNS: tuple[str, ...] = ("cifar10-mini",)


def shipped_path(name: str) -> Path:
    """Path of a shipped GHN's ``.safetensors`` file inside the installed package."""
    return Path(str(importlib.resources.files("ghninit") / "weights" / f"{name}.safetensors"))


def shipped_card(name: str) -> dict:
    """The provenance card of a shipped GHN (``weights/<name>.json``): sha256, training, evaluation."""
    path = shipped_path(name).with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GHNLoadError(
            f"shipped GHN '{name}': its card {path} is missing or unreadable ({err}); the installation is "
            "incomplete. Fix: reinstall ghninit (pip install --force-reinstall ghninit)."
        ) from err


def _load_shipped(name: str) -> GHN2:
    path = shipped_path(name)
    expected = shipped_card(name).get("sha256")
    if not path.is_file():
        raise GHNLoadError(
            f"shipped GHN '{name}': {path} is missing; the installation is incomplete. "
            "Fix: reinstall ghninit (pip install --force-reinstall ghninit)."
        )
    actual = file_sha256(path)
    if actual != expected:
        raise GHNLoadError(
            f"shipped GHN '{name}': {path} is corrupt (sha256 {actual}, expected {expected}). Nothing was loaded. "
            "Fix: reinstall ghninit (pip install --force-reinstall ghninit)."
        )
    return _load_safetensors_file(path)


def resolve_known(name: str, revision: str | None = None) -> tuple[str, str, str | None]:
    """``(repo_id, revision, expected_sha256)`` of a known GHN, after environment overrides.

    Args:
        name: a key of :data:`KNOWN_GHNS`.
        revision: an explicit revision, which wins over the environment and the table.
    """
    known = KNOWN_GHNS[name]
    repo_id = os.environ.get(known.env(name, "REPO")) or known.repo_id
    overridden = repo_id != known.repo_id
    revision = revision or os.environ.get(known.env(name, "REVISION")) or ("main" if overridden else known.revision)
    sha256 = known.sha256 if not overridden and revision == known.revision else None
    return repo_id, revision, sha256


def load_ghn(
    source: str | os.PathLike,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
) -> GHN2:
    """Load a GHN-2.

    Args:
        source: a shipped name (``"cifar10-mini"``, no network; see :data:`SHIPPED_GHNS`), a known
            name (``"imagenet"``, ``"cifar10"``; see :data:`KNOWN_GHNS`), a Hub repo
            id (``"org/repo"``) in our layout, a local folder in that layout (``config.json`` +
            ``model.safetensors``), a ``.safetensors`` file (config in its metadata key
            ``config`` or in a ``config.json`` beside it), or an official reference ``.pt``
            checkpoint. A shipped or known name wins over a folder of the same name: write
            ``./imagenet`` for the folder.
        revision: Hub branch, tag or commit (known names default to their pinned revision).
        device: where to put the GHN.
        cache_dir: Hub cache folder (default: huggingface_hub's, under ``HF_HOME``).
        force_download: download again even if cached (e.g. after a corruption error).
        token: Hub token for private repos (default: huggingface_hub's, e.g. ``HF_TOKEN``).

    Returns:
        the GHN in eval mode, with ``source`` set to ``str(source)``.

    Raises:
        GHNLoadError: with what was tried and how to fix it. A corrupt or truncated file is an
            error, never a silent fallback to other weights.
    """
    name = str(source)
    if name in SHIPPED_GHNS:
        if revision is not None:
            raise GHNLoadError(f"'{name}' is shipped with ghninit: revision={revision!r} only applies to Hub repos")
        ghn = _load_shipped(name)
    elif name in KNOWN_GHNS or not Path(source).exists():
        folder = download_ghn(source, revision, cache_dir=cache_dir, force_download=force_download, token=token)
        ghn = _load_folder(folder)
    else:
        path = Path(source)
        if revision is not None:
            raise GHNLoadError(f"{path} is a local path: revision={revision!r} only applies to Hub repos")
        ghn = _load_folder(path) if path.is_dir() else _load_file(path)
    ghn.source = name  # what reports name it by
    return ghn.to(device).eval()


def download_ghn(
    source: str,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Download (or find in the cache) a GHN from the Hub and return its verified snapshot folder.

    The folder holds ``config.json`` and ``model.safetensors`` of one commit; it can be passed to
    :func:`load_ghn` or copied elsewhere. Use it to pre-download GHNs for offline machines.

    Args:
        source: a known name or a Hub repo id (``"org/repo"``).
        revision, cache_dir, force_download, token: as in :func:`load_ghn`.
    """
    name = str(source)
    if name in SHIPPED_GHNS:
        raise GHNLoadError(
            f"'{name}' is shipped with ghninit ({shipped_path(name)}): load_ghn('{name}') needs no download"
        )
    if name in KNOWN_GHNS:
        repo_id, revision, expected_sha256 = resolve_known(name, revision)
    elif _REPO_ID.match(name) and not name.startswith("."):
        repo_id, revision, expected_sha256 = name, revision or "main", None
    else:
        raise GHNLoadError(
            f"'{source}' is neither a shipped GHN ({', '.join(SHIPPED_GHNS)}), nor a known GHN "
            f"({', '.join(KNOWN_GHNS)}), nor an existing local file or "
            "folder, nor a Hub repo id of the form 'org/name'."
        )
    tried = (
        f"tried: repo '{repo_id}' at revision '{revision}' from {constants.ENDPOINT} "
        f"(HF_ENDPOINT), cache {cache_dir or constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE), "
        f"offline mode {'on' if constants.HF_HUB_OFFLINE else 'off'} (HF_HUB_OFFLINE)"
    )
    paths = {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[filename] = Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                )
            )
        except Exception as err:  # huggingface_hub raises many types; each is explained below
            raise GHNLoadError(_explain(err, name, repo_id, revision, filename, tried)) from err
    folder = paths[WEIGHTS_NAME].parent
    if paths[CONFIG_NAME].parent != folder:  # a branch moved between the two downloads
        raise GHNLoadError(
            f"{CONFIG_NAME} and {WEIGHTS_NAME} of '{repo_id}' came from different commits "
            f"({paths[CONFIG_NAME].parent.name}, {folder.name}): the branch '{revision}' moved while "
            "downloading. Retry, or pin a commit with revision=."
        )
    _verify_cached(paths[WEIGHTS_NAME], expected_sha256, f"'{repo_id}' (commit {folder.name})")
    return folder


def _explain(err: Exception, source: str, repo_id: str, revision: str, filename: str, tried: str) -> str:
    """An error message: what failed, what was tried, how to fix it, and huggingface_hub's own error."""
    local = "or pass a local path (a folder with config.json + model.safetensors, or a .safetensors file)"
    fetch = f"python -c \"from ghninit.hub import download_ghn; download_ghn('{source}', revision='{revision}')\""
    if isinstance(err, LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
        what = f"HF_HUB_OFFLINE is set and the cache has no copy of {filename} at revision '{revision}'"
        fix = f"run once online with the same HF_HOME (`{fetch}`), or set HF_HUB_OFFLINE=0, {local}"
    elif isinstance(err, LocalEntryNotFoundError):
        what = f"the Hub could not be reached and the cache has no copy of {filename} at revision '{revision}'"
        fix = (
            "check the network, proxy and HF_ENDPOINT; or run once on a machine with network access "
            f"(`{fetch}`) and copy its cache (HF_HOME); {local}"
        )
    elif isinstance(err, RevisionNotFoundError):
        what = f"revision '{revision}' does not exist in '{repo_id}'"
        fix = "pass an existing branch, tag or commit (revision=, or GHNINIT_HUB_REVISION_* for a known name)"
    elif isinstance(err, RemoteEntryNotFoundError):
        what = f"'{repo_id}' has no {filename} at revision '{revision}': it is not a ghninit GHN repo"
        fix = "use a repo with config.json + model.safetensors (convert checkpoints with hub/convert_ppuda.py)"
    elif isinstance(err, GatedRepoError | RepositoryNotFoundError):
        what = f"repo '{repo_id}' was not found, or needs a token"
        fix = (
            f"check the repo id (and GHNINIT_HUB_REPO_* overrides); for a private repo, log in "
            f"(`hf auth login`) or set HF_TOKEN; {local}"
        )
    elif isinstance(err, OSError):  # huggingface_hub's size check, HTTP and network errors
        what = f"downloading {filename} failed or was incomplete (truncated file or network error)"
        fix = f"retry, with load_ghn(..., force_download=True) to discard any partial copy; {local}"
    else:
        what = f"downloading {filename} failed"
        fix = f"check the network and HF_ENDPOINT; {local}"
    return (
        f"could not load GHN '{source}': {what}.\n{tried}.\nFix: {fix}.\n"
        f"(huggingface_hub: {type(err).__name__}: {_first_line(err)})"
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_cached(path: Path, expected_sha256: str | None, what: str) -> None:
    """Check a cached ``model.safetensors`` against its sha256.

    The Hub serves large (LFS) files with their sha256 as ETag and huggingface_hub names the cached
    blob after it, so a blob named by 64 hex digits must hash to its name. The table's pinned sha256
    is checked too when there is one.
    """
    blob = path.resolve()
    expected = {e for e in (expected_sha256, blob.name if _SHA256.match(blob.name) else None) if e}
    if not expected:
        return
    actual = file_sha256(blob)
    if actual not in expected or len(expected) > 1:
        raise GHNLoadError(
            f"{WEIGHTS_NAME} of {what} is corrupt: its sha256 is {actual}, expected {' and '.join(sorted(expected))} "
            f"(cached file {path} -> {blob}). Nothing was loaded. Fix: download it again with "
            "load_ghn(..., force_download=True) or delete that file; if it persists, the server or mirror "
            "(HF_ENDPOINT) serves a damaged file."
        )


def _load_folder(folder: Path) -> GHN2:
    """Load a folder in the Hub layout with ``GHN2.from_pretrained`` (the mixin), strictly."""
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise GHNLoadError(
            f"{folder}: missing {', '.join(missing)}; a GHN folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(as written by GHN2.save_pretrained or hub/convert_ppuda.py)"
        )
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError) as err:
        raise GHNLoadError(f"{folder / CONFIG_NAME}: not readable JSON ({err}); the file may be corrupt") from err
    if not isinstance(config, dict):
        raise GHNLoadError(f"{folder / CONFIG_NAME}: expected a JSON object of GHN2 arguments, got {config!r}")
    _check_safetensors(folder / WEIGHTS_NAME)
    check_safetensors_header(folder / WEIGHTS_NAME, config, folder)  # before from_pretrained allocates
    try:
        # the mixin prints "Loading weights from local directory"; a library should not
        with contextlib.redirect_stdout(io.StringIO()):
            ghn = GHN2.from_pretrained(str(folder), strict=True)
    except (TypeError, RuntimeError, ValueError, NotImplementedError, SafetensorError) as err:
        raise GHNLoadError(f"{folder}: weights do not match a GHN-2 of config {config}: {err}") from err
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


def _load_file(path: Path) -> GHN2:
    if path.suffix == ".safetensors":
        return _load_safetensors_file(path)
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return ghn_from_reference_checkpoint(path)
    raise GHNLoadError(f"{path}: expected a .safetensors file, a reference .pt checkpoint or a folder")


def _load_safetensors_file(path: Path) -> GHN2:
    metadata = _check_safetensors(path)
    if "config" in metadata:
        config = json.loads(metadata["config"])
    elif (path.parent / CONFIG_NAME).is_file():
        config = json.loads((path.parent / CONFIG_NAME).read_text())
    else:
        raise GHNLoadError(
            f"{path}: safetensors metadata has no 'config' key and there is no {CONFIG_NAME} beside it; "
            "save GHNs with ghninit (GHN2.save_pretrained)"
        )
    check_safetensors_header(path, config)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GHNLoadError(f"{path}: not a readable safetensors file ({err}); the file may be truncated") from err
    return _build(config, state, path)


def ghn_from_reference_checkpoint(path: str | os.PathLike) -> GHN2:
    """Load an official reference checkpoint (``{'state_dict', 'config', 'epoch'}``) without unpickling code.

    Only ``torch.load(..., weights_only=True)`` is used: tensors and plain containers, no code.
    """
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
    config = check_state_shapes(config, state, source)
    try:
        ghn = GHN2(**config)
        ghn.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError, NotImplementedError) as err:
        raise GHNLoadError(f"{source}: weights do not match a GHN-2 of config {config}: {err}") from err
    return ghn
