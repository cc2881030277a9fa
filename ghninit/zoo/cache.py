"""The local cache of converted GHNs: where it is, how it is filled, and how a cached copy is checked.

A GHN that is published in another form (a reference ``.pt`` file, a pickle) is fetched, verified
and converted once into ghninit's folder layout (``config.json``, ``model.safetensors``, a model
card ``README.md`` and ``provenance.json``) under ``<cache>/ghns/<name>/<source key>/``; afterwards it
loads from there without any request. The cache is ``$GHNINIT_CACHE``, else
``$XDG_CACHE_HOME/ghninit``, else ``~/.cache/ghninit``. :func:`fetch_convert_store` is the one
"fetch, verify, convert, store" path, shared by every kind of source: it holds a file lock (so the
ranks of a ``torchrun`` job download once and never see a half-written folder; the operating
system releases it when its holder dies, and a waiter gives up after ``GHNINIT_LOCK_TIMEOUT``
seconds with a message naming the lock), works in a work folder ``<cache>/ghns/.tmp/<name>--<key>``
and publishes the result with an atomic rename. The work folder is removed once the GHN is stored
or the fetched file is rejected; after a download that failed or was interrupted it is kept, so
that the next call resumes the partial file in it, and any work folder untouched for a day is
removed. Every load checks the cached ``model.safetensors`` against the sha256 recorded in
``provenance.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from ..errors import GHNLoadError, SourceUnavailable

CACHE_ENV = "GHNINIT_CACHE"
OFFLINE_ENV = "GHNINIT_OFFLINE"
PROVENANCE_NAME = "provenance.json"
WEIGHTS_NAME = "model.safetensors"
LOCK_TIMEOUT_ENV = "GHNINIT_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 3600.0
STALE_WORK_SECONDS = 24 * 3600.0
LOCK_LOG_SECONDS = 10.0

logger = logging.getLogger("ghninit.download")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder converted GHNs are kept in: ``cache_dir`` if given, else ``$GHNINIT_CACHE``,
    else ``$XDG_CACHE_HOME/ghninit``, else ``~/.cache/ghninit`` (read at each call)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "ghninit"


def converted_folder(cache_dir: str | os.PathLike | None, name: str, key: str) -> Path:
    """``<cache>/ghns/<name>/<key>``: where the converted copy of GHN ``name`` from source ``key`` lives."""
    return cache_root(cache_dir) / "ghns" / name / key


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (as huggingface_hub read it, or now) or ``GHNINIT_OFFLINE`` is set."""
    from huggingface_hub import constants

    return (
        bool(constants.HF_HUB_OFFLINE)
        or _truthy(os.environ.get("HF_HUB_OFFLINE"))
        or _truthy(os.environ.get(OFFLINE_ENV))
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file (``sha1(b"blob <size>\\0" + data)``), as a commit's tree lists it."""
    digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``final``; when the block succeeds, it becomes ``final`` atomically.

    On any error the staged folder is removed and ``final`` is left as it was, so a reader sees
    either the old complete folder or the new complete one, never a partial write.
    """
    final = Path(final)
    created_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield stage
        os.chmod(stage, 0o755)  # mkdtemp made it private; a shared cache must be readable
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
            os.replace(final, old)
            os.replace(stage, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created_parent:
            with contextlib.suppress(OSError):
                final.parent.rmdir()  # only if empty
        raise


def write_ghn_folder(ghn: torch.nn.Module, folder: Path, provenance: dict, card: Callable[[dict], str]) -> dict:
    """Write ``config.json`` + ``model.safetensors`` (the mixin's ``save_pretrained``), ``provenance.json``
    and the model card ``README.md`` into ``folder``; returns the completed provenance.

    The written tensors are read back and compared with the module's, so a folder is only ever
    published with exactly the weights that were converted.

    Args:
        ghn: a module with ``config`` and ``save_pretrained`` (``PyTorchModelHubMixin``).
        folder: where to write (normally a :func:`staged_folder`).
        provenance: where the weights come from (source repo, commit, path, hashes, license, ...).
        card: renders the model card from the completed provenance.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    ghn.save_pretrained(folder, config=ghn.config)
    state, written = ghn.state_dict(), load_file(str(folder / WEIGHTS_NAME))
    if state.keys() != written.keys() or any(not torch.equal(state[k].cpu(), written[k]) for k in state):
        raise GHNLoadError(
            f"{folder / WEIGHTS_NAME}: the written tensors differ from the converted GHN; nothing stored"
        )
    provenance = {
        **provenance,
        "weights_sha256": file_sha256(folder / WEIGHTS_NAME),
        "parameters": sum(t.numel() for t in state.values()),
        "config": ghn.config,
    }
    (folder / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    (folder / "README.md").write_text(card(provenance))
    return provenance


def read_provenance(folder: Path) -> dict:
    """``provenance.json`` of a cached folder (``{}`` when it has none)."""
    path = Path(folder) / PROVENANCE_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise GHNLoadError(f"{path}: unreadable ({err}); delete {folder} or download again") from err


def verify_cached_folder(folder: Path, what: str, fix: str) -> Path:
    """Check a cached folder's ``model.safetensors`` against its recorded sha256; returns the folder."""
    provenance = read_provenance(folder)
    expected, weights = provenance.get("weights_sha256"), Path(folder) / WEIGHTS_NAME
    actual = file_sha256(weights) if weights.is_file() else "missing"
    if not expected or actual != expected:
        raise GHNLoadError(
            f"{what}: the cached copy {folder} is damaged ({WEIGHTS_NAME} sha256 {actual}, recorded "
            f"{expected or 'nothing'}). Nothing was loaded. Fix: {fix}, or delete that folder."
        )
    return Path(folder)


def fetch_convert_store(
    folder: Path,
    *,
    fetch: Callable[[Path], Path],
    convert: Callable[[Path], torch.nn.Module],
    provenance: dict,
    card: Callable[[dict], str],
    what: str,
    fix: str,
    force: bool = False,
) -> Path:
    """The cached, converted copy of a GHN published in another form; made once, under a file lock.

    Args:
        folder: :func:`converted_folder`, the converted copy's place.
        fetch: downloads the published file into the given empty work folder, verifies it against
            its pinned hash (raising :class:`GHNLoadError` on a mismatch, after deleting it) and
            returns its path. It raises :class:`SourceUnavailable` when it cannot reach the file.
        convert: reads the verified file (never unpickling code) into a GHN module.
        provenance: what the card and ``provenance.json`` record about the source (the sha256 of the
            fetched file, when it is a file, is added as ``source_sha256``).
        card: renders the model card from the completed provenance.
        what: names the GHN and source in messages.
        fix: how to repair a damaged cached copy (e.g. the ``download_ghn(..., force_download=True)`` call).
        force: fetch and convert again even if a cached copy exists.

    Returns:
        the folder, verified.

    Raises:
        SourceUnavailable: offline (``HF_HUB_OFFLINE`` / ``GHNINIT_OFFLINE``) with no cached copy,
            or ``fetch`` could not reach the file.
        GHNLoadError: verification or conversion failed; nothing is left in the cache.
    """
    folder = Path(folder)
    if folder.is_dir() and not force:
        return verify_cached_folder(folder, what, fix)
    if is_offline():
        raise SourceUnavailable(
            f"offline mode is on (HF_HUB_OFFLINE / {OFFLINE_ENV}) and the cache has no converted copy at {folder}"
        )
    root = folder.parent.parent
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    with cache_lock(root / ".locks" / f"{folder.parent.name}--{folder.name}.lock", what):
        if folder.is_dir() and not force:  # another process made it while we waited for the lock
            return verify_cached_folder(folder, what, fix)
        work = root / ".tmp" / f"{folder.parent.name}--{folder.name}"
        remove_stale_work(root / ".tmp", keep=work)
        work.mkdir(parents=True, exist_ok=True)
        try:
            fetched = fetch(work)
            ghn = convert(fetched)
            if fetched.is_file():  # what was converted, exactly
                provenance = {**provenance, "source_sha256": file_sha256(fetched)}
            with staged_folder(folder) as stage:
                write_ghn_folder(ghn, stage, provenance, card)
        except (SourceUnavailable, KeyboardInterrupt, SystemExit):  # a partial download stays, to be resumed
            with contextlib.suppress(OSError):
                work.rmdir()  # only if empty
            raise
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
    return verify_cached_folder(folder, what, fix)


@contextlib.contextmanager
def cache_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the file lock ``path`` (``filelock``: released by the operating system if its holder dies).

    While another process holds it, a message is logged every 10 s; after ``$GHNINIT_LOCK_TIMEOUT``
    seconds (default 3600) the wait ends with a :class:`GHNLoadError` that names the lock file.
    """
    value = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        timeout = float(value) if value else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        raise GHNLoadError(f"{LOCK_TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    lock, start = FileLock(str(path)), time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        try:
            lock.acquire(timeout=max(0.0, min(LOCK_LOG_SECONDS, left)))
            break
        except Timeout:
            waited = time.monotonic() - start
            if waited >= timeout:
                raise GHNLoadError(
                    f"{what}: gave up after waiting {waited:.0f} s for the lock {path}: another process is "
                    f"downloading or converting this GHN into the same cache. Fix: let it finish and retry; raise "
                    f"the limit with {LOCK_TIMEOUT_ENV}=<seconds>. (A process that died releases the lock by itself; "
                    "on a file system without file locks, delete the lock file if no other process is running.)"
                ) from None
            logger.warning("%s: waiting for another process to finish (lock %s, %.0f s so far)", what, path, waited)
    try:
        yield
    finally:
        lock.release()


def remove_stale_work(tmp: Path, keep: Path, age: float = STALE_WORK_SECONDS) -> list[Path]:
    """Remove the entries of ``tmp`` (other than ``keep``) in which nothing changed for ``age`` seconds.

    They are what killed or failed runs left (partial downloads nothing resumed); a live download
    writes to its folder every few seconds at most (its read timeout). Returns what was removed.
    """
    removed, now = [], time.time()
    if not tmp.is_dir():
        return removed
    for entry in tmp.iterdir():
        if entry == keep:
            continue
        try:
            newest = max(p.lstat().st_mtime for p in (entry, *entry.rglob("*")))
        except OSError:
            continue  # removed meanwhile
        if now - newest > age:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
            logger.info("removed %s, left by an interrupted download (untouched for %.0f h)", entry, age / 3600)
    return removed
