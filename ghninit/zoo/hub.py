"""Loading a GHN from a shipped or known name, a Hugging Face Hub repo, a local folder or a file.

Shipped names (:data:`SHIPPED_GHNS`, e.g. ``cifar10-mini``) are GHNs trained with this project and
installed with the package (``ghninit/zoo/weights/``): they load with no network. Known names
(:data:`~ghninit.zoo.registry.KNOWN_GHNS`, e.g. ``imagenet``, ``ghn1-cifar10``) resolve to an ordered
list of sources: a Hub repo in ghninit's layout once one is pinned, then the official reference
checkpoint, pinned by commit, path and git blob SHA-1, downloaded, verified and converted once into
the local cache (:mod:`ghninit.zoo.cache`, :mod:`ghninit.zoo.official`); the GHN-3 names (``ghn3-t``, ...)
come from the published joblib files on the Hub, read with a restricted unpickler and converted into
the same cache (:mod:`ghninit.zoo.ghn3_weights`). A Hub repo in our layout holds
``config.json``, ``model.safetensors`` and a model card ``README.md``: what
``PyTorchModelHubMixin.save_pretrained`` writes. Hub downloads and their cache are
huggingface_hub's own, so ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and
``HF_TOKEN`` behave as it defines them (it reads them when it is imported). Weights are read with
safetensors; a reference ``.pt`` checkpoint is read only with ``torch.load(weights_only=True)``:
nothing is ever unpickled.

Environment overrides of a known name's Hub source, for forks and mirrors (``NAME`` is any name of
the GHN in upper case with ``_`` for ``-``, e.g. ``IMAGENET`` or ``GHN2_IMAGENET``):

- ``GHNINIT_HUB_REPO_NAME``: repo id to use instead of the table's sources. The pinned revision
  belongs to the table's repo, so with an overridden repo the revision defaults to ``main``.
- ``GHNINIT_HUB_REVISION_NAME``: branch, tag or commit to use instead of the pinned one.

To point at a whole Hub mirror (same repo ids and commits), set ``HF_ENDPOINT`` instead; for a
mirror of the official files, ``GHNINIT_OFFICIAL_URL``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
import warnings
from functools import partial
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download, hf_hub_url, try_to_load_from_cache
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

from ..errors import GHNLoadError, SourceUnavailable
from ..ghn import GHNBase
from .cache import OFFLINE_ENV, cache_root, converted_folder, fetch_convert_store, file_sha256, is_offline
from .cards import render_card
from .download import probe_hub_file
from .files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ghn_from_reference_checkpoint,
    load_ghn_folder,
    load_path,
    load_safetensors_file,
)
from .ghn3_weights import HubPickle
from .registry import KNOWN_GHNS, HubWeights, KnownGHN, Source, register_ghn, variant_of

__all__ = [
    "KNOWN_GHNS",
    "SHIPPED_GHNS",
    "GHNLoadError",
    "HubWeights",
    "KnownGHN",
    "download_ghn",
    "file_sha256",
    "ghn_from_reference_checkpoint",
    "known_sources",
    "load_ghn",
    "register_ghn",
    "shipped_card",
    "shipped_path",
]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# GHNs shipped as package data: ``weights/<name>.safetensors`` (config in its metadata) and
# ``weights/<name>.json`` (its sha256 and how it was trained and evaluated).
SHIPPED_GHNS: tuple[str, ...] = ("cifar10-mini",)


def shipped_path(name: str) -> Path:
    """Path of a shipped GHN's ``.safetensors`` file inside the installed package."""
    return Path(str(importlib.resources.files("ghninit.zoo") / "weights" / f"{name}.safetensors"))


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


def _load_shipped(name: str) -> GHNBase:
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
    return load_safetensors_file(path)


def known_sources(name: str, revision: str | None = None) -> tuple[Source, ...]:
    """The sources of a known GHN in the order they are tried, after environment overrides.

    Args:
        name: any name of a known GHN (see :data:`~ghninit.zoo.registry.KNOWN_GHNS`).
        revision: an explicit Hub revision: only the Hub source is then used, at that revision.
    """
    entry = KNOWN_GHNS[name]

    def env(what: str) -> str | None:
        for n in entry.names:
            value = os.environ.get(f"GHNINIT_HUB_{what}_{n.upper().replace('-', '_')}")
            if value:
                return value
        return None

    repo_id, revision = env("REPO"), revision or env("REVISION")
    hubs = [s for s in entry.sources if isinstance(s, HubWeights | HubPickle)]
    if repo_id:  # a fork or mirror the user chose: nothing else is tried
        return (HubWeights(repo_id, revision or "main", None, f"GHNINIT_HUB_REPO_* for '{name}'"),)
    if revision:
        if not hubs:
            raise GHNLoadError(
                f"'{name}' has no Hub repo pinned (it comes from the {entry.sources[0].describe()}): revision="
                f"{revision!r} only applies to Hub repos. Set GHNINIT_HUB_REPO_{name.upper().replace('-', '_')} "
                "to use a Hub repo, or leave the revision out."
            )
        hub = hubs[0]
        sha256 = hub.sha256 if revision == hub.revision else None
        if isinstance(hub, HubPickle):
            return (dataclasses.replace(hub, revision=revision, sha256=sha256),)
        return (HubWeights(hub.repo_id, revision, sha256, hub.source),)
    return entry.sources


def load_ghn(
    source: str | os.PathLike,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
) -> GHNBase:
    """Load a GHN.

    Args:
        source: a shipped name (``"cifar10-mini"``, no network; see :data:`SHIPPED_GHNS`), a known
            name (``"imagenet"``, ``"cifar10"``, ``"ghn1-imagenet"``, ``"ghn3-t"``, ...; see
            :func:`ghninit.list_ghns`),
            a Hub repo id (``"org/repo"``) in our layout, a local folder in that layout
            (``config.json`` + ``model.safetensors``), a ``.safetensors`` file (config in its
            metadata key ``config`` or in a ``config.json`` beside it), or an official reference
            ``.pt`` checkpoint. A shipped or known name wins over a folder of the same name:
            write ``./imagenet`` for the folder.
        revision: Hub branch, tag or commit (a known name's Hub source defaults to its pinned revision).
        device: where to put the GHN.
        cache_dir: cache folder for both Hub downloads and converted official files (default:
            huggingface_hub's under ``HF_HOME``, and ``GHNINIT_CACHE`` or ``$XDG_CACHE_HOME/ghninit``).
        force_download: download (and convert) again even if cached (e.g. after a corruption error).
        token: Hub token for private repos (default: huggingface_hub's, e.g. ``HF_TOKEN``).

    Returns:
        the GHN in eval mode, with ``source`` set to ``str(source)``.

    Raises:
        GHNLoadError: with what was tried and how to fix it. A corrupt, truncated or unverified
            file is an error, never a silent fallback to other weights.
    """
    name = str(source)
    if name in SHIPPED_GHNS:
        if revision is not None:
            raise GHNLoadError(f"'{name}' is shipped with ghninit: revision={revision!r} only applies to Hub repos")
        ghn = _load_shipped(name)
    elif name in KNOWN_GHNS or not Path(source).exists():
        folder = download_ghn(source, revision, cache_dir=cache_dir, force_download=force_download, token=token)
        ghn = load_ghn_folder(folder)
    else:
        path = Path(source)
        if revision is not None:
            raise GHNLoadError(f"{path} is a local path: revision={revision!r} only applies to Hub repos")
        ghn = load_path(path)
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
    """Download (or find in the cache) a known GHN or a Hub repo and return its verified folder.

    The folder holds ``config.json`` and ``model.safetensors``; it can be passed to
    :func:`load_ghn` or copied elsewhere. Run it on a connected machine to pre-fill the cache for
    offline ones (``python -m ghninit download NAME`` does the same).

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
        return _download_known(KNOWN_GHNS[name], name, revision, cache_dir, force_download, token)
    if _REPO_ID.match(name) and not name.startswith("."):
        return _download_hub(HubWeights(name, revision or "main", None, name), name, cache_dir, force_download, token)
    raise GHNLoadError(
        f"'{source}' is neither a shipped GHN ({', '.join(SHIPPED_GHNS)}), nor a known GHN "
        f"({', '.join(KNOWN_GHNS)}), nor an existing local file or "
        "folder, nor a Hub repo id of the form 'org/name'."
    )


def _download_known(entry: KnownGHN, name: str, revision: str | None, cache_dir, force_download: bool, token) -> Path:
    """Try the sources of a known GHN in order; the first that can provide it wins."""
    tried, sources = [], known_sources(name, revision)
    for source in sources:
        try:
            if isinstance(source, HubWeights):
                return _download_hub(source, name, cache_dir, force_download, token, more=len(sources) > 1)
            return _converted_copy(entry, source, cache_dir, force_download, token)
        except SourceUnavailable as err:
            tried.append(f"  {len(tried) + 1}. {source.describe()}:\n     " + str(err).replace("\n", "\n     "))
    hub = any(isinstance(s, HubWeights) for s in sources)
    root = cache_root(cache_dir)
    raise GHNLoadError(
        f"could not load GHN '{name}' ({entry.title}): no source could provide it. Sources tried, in order:\n"
        + "\n".join(tried)
        + f"\nCache of converted GHNs: {root} (cache_dir=, else GHNINIT_CACHE, else $XDG_CACHE_HOME/ghninit)"
        + (f"; Hub cache: {cache_dir or constants.HF_HUB_CACHE} (HF_HOME)" if hub else "")
        + f"; offline mode {'on' if is_offline() else 'off'} (HF_HUB_OFFLINE / {OFFLINE_ENV}).\n"
        "Fix: check the network (and GHNINIT_OFFICIAL_URL / HF_ENDPOINT if set). For an offline machine, pre-fill "
        f"the cache on a connected one with `GHNINIT_CACHE={root}"
        + (" HF_HOME=<the same HF_HOME>" if hub else "")
        + f" python -m ghninit download {name}` (or ghninit.download_ghn('{name}')), then copy that folder here "
        "or share it; or pass a local path (a folder with config.json + model.safetensors, a .safetensors file, or "
        "a reference .pt checkpoint)."
    )


def _converted_copy(entry: KnownGHN, source, cache_dir, force_download: bool, token=None) -> Path:
    """The cached copy of a source that must be fetched and converted (e.g. an official ``.pt``).

    ``token`` is handed to the source's ``fetch`` (used by sources on the Hub, such as a GHN-3 pickle).
    """
    import ghninit

    def convert(path: Path) -> GHNBase:
        ghn = source.convert(path)
        found = variant_of(ghn.config)
        if found != entry.variant:
            warnings.warn(
                f"'{entry.name}' is listed as {entry.variant}, but the checkpoint's config describes "
                f"{found or 'no known variant'} ({ghn.config}); it is loaded as its config says",
                stacklevel=4,
            )
        return ghn

    return fetch_convert_store(
        converted_folder(cache_dir, entry.name, source.cache_key),
        fetch=partial(source.fetch, token=token),
        convert=convert,
        provenance={**source.provenance(), "converted_by": f"ghninit {ghninit.__version__}"},
        card=lambda provenance: render_card(entry, provenance),
        what=f"GHN '{entry.name}' ({source.describe()})",
        fix=f"ghninit.download_ghn('{entry.name}', force_download=True)",
        force=force_download,
    )


def _download_hub(hub: HubWeights, name: str, cache_dir, force_download: bool, token, more: bool = False) -> Path:
    """The verified snapshot folder of a Hub repo in our layout, from huggingface_hub's cache or the Hub.

    With ``more`` (other sources follow), a repo that is merely unavailable raises :class:`SourceUnavailable`.
    """
    repo_id, revision = hub.repo_id, hub.revision
    tried = (
        f"tried: repo '{repo_id}' at revision '{revision}' from {constants.ENDPOINT} "
        f"(HF_ENDPOINT), cache {cache_dir or constants.HF_HUB_CACHE} (HF_HOME / HF_HUB_CACHE), "
        f"offline mode {'on' if is_offline() else 'off'} (HF_HUB_OFFLINE / {OFFLINE_ENV})"
    )
    if not is_offline() and (force_download or not _cached_on_hub(repo_id, revision, cache_dir)):
        # hf_hub_download alone retries a stalled first request for minutes: ask once with ghninit's timeout
        try:
            probe_hub_file(hf_hub_url(repo_id, CONFIG_NAME, revision=revision), token=token)
        except SourceUnavailable as err:
            asked = f"Hub repo '{repo_id}'" + ("" if name == repo_id else f" (for '{name}')")
            raise (SourceUnavailable if more else GHNLoadError)(f"{asked}: {err} ({tried})") from err
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
                    local_files_only=is_offline(),
                )
            )
        except Exception as err:  # huggingface_hub raises many types; each is explained below
            message, unavailable = _explain(err, name, repo_id, revision, filename, tried)
            raise (SourceUnavailable if unavailable and more else GHNLoadError)(message) from err
    folder = paths[WEIGHTS_NAME].parent
    if paths[CONFIG_NAME].parent != folder:  # a branch moved between the two downloads
        raise GHNLoadError(
            f"{CONFIG_NAME} and {WEIGHTS_NAME} of '{repo_id}' came from different commits "
            f"({paths[CONFIG_NAME].parent.name}, {folder.name}): the branch '{revision}' moved while "
            "downloading. Retry, or pin a commit with revision=."
        )
    _verify_cached(paths[WEIGHTS_NAME], hub.sha256, f"'{repo_id}' (commit {folder.name})")
    return folder


def _cached_on_hub(repo_id: str, revision: str, cache_dir) -> bool:
    """Whether huggingface_hub's cache already holds both files of the repo at ``revision``."""
    return all(
        isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)
        for filename in (CONFIG_NAME, WEIGHTS_NAME)
    )


def _explain(err: Exception, source: str, repo_id: str, revision: str, filename: str, tried: str) -> tuple[str, bool]:
    """An error message (what failed, what was tried, how to fix it, huggingface_hub's own error), and
    whether the repo is merely unavailable (offline, unreachable, absent), so that a next source may be tried."""
    local = "or pass a local path (a folder with config.json + model.safetensors, or a .safetensors file)"
    fetch = f"python -c \"from ghninit.zoo.hub import download_ghn; download_ghn('{source}', revision='{revision}')\""
    unavailable = True
    if isinstance(err, LocalEntryNotFoundError) and is_offline():
        what = f"offline mode is on and the cache has no copy of {filename} at revision '{revision}'"
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
        unavailable = False
    else:
        what = f"downloading {filename} failed"
        fix = f"check the network and HF_ENDPOINT; {local}"
        unavailable = False
    message = (
        f"could not load GHN '{source}': {what}.\n{tried}.\nFix: {fix}.\n"
        f"(huggingface_hub: {type(err).__name__}: {_first_line(err)})"
    )
    return message, unavailable


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


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
