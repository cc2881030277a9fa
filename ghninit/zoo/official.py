"""Official checkpoints of the reference implementation, pinned by commit, path and git blob SHA-1.

An :class:`OfficialFile` is a file in a GitHub repository at a fixed commit (by default the
``checkpoints/`` folder of facebookresearch/ppuda, MIT). :meth:`OfficialFile.fetch` downloads it
from GitHub's raw-file endpoint with :func:`ghninit.zoo.download.download_file` (timeouts, retries,
resume of a ``.partial`` file, progress bar) and checks its git blob SHA-1 before anything reads it;
:meth:`OfficialFile.convert` reads it only with ``torch.load(weights_only=True)``. The base URL, up
to and including the commit, can be replaced with ``GHNINIT_OFFICIAL_URL`` (a mirror, or a test
server); the file's path in the repository is appended to it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GHNLoadError
from .cache import git_blob_sha1
from .download import download_file
from .files import ghn_from_reference_checkpoint

PPUDA_REPO = "facebookresearch/ppuda"
PPUDA_COMMIT = "4673a42507a9dcd0a5ae04e74599e8c92af689b9"
OFFICIAL_URL_ENV = "GHNINIT_OFFICIAL_URL"
RAW_ENDPOINT = "https://raw.githubusercontent.com"

logger = logging.getLogger("ghninit.download")


@dataclass(frozen=True)
class OfficialFile:
    """A checkpoint file in a GitHub repository at a pinned commit.

    Attributes:
        path: the file's path in the repository, e.g. ``checkpoints/ghn2_imagenet.pt``.
        blob_sha1: its git blob SHA-1 in that commit's tree; the download must hash to it.
        repo: ``owner/name`` on GitHub.
        commit: the pinned 40-hex commit.
        license: the repository's license, recorded in the model card.
    """

    path: str
    blob_sha1: str
    repo: str = PPUDA_REPO
    commit: str = PPUDA_COMMIT
    license: str = "MIT"

    kind = "official"

    @property
    def cache_key(self) -> str:
        """The converted copy's folder name in the cache: changes whenever the pinned file does."""
        return f"official-{self.blob_sha1}"

    def url(self) -> str:
        """``$GHNINIT_OFFICIAL_URL/<path>``, else GitHub's raw-file URL of the pinned commit."""
        base = os.environ.get(OFFICIAL_URL_ENV) or f"{RAW_ENDPOINT}/{self.repo}/{self.commit}"
        return f"{base.rstrip('/')}/{self.path}"

    def describe(self) -> str:
        """One line saying where this source is."""
        return f"official file {self.path} of {self.repo} at commit {self.commit}, from {self.url()}"

    def provenance(self) -> dict:
        """What the model card and ``provenance.json`` record about this source."""
        return {
            "source": "official file",
            "repo": f"https://github.com/{self.repo}",
            "commit": self.commit,
            "path": self.path,
            "source_file": Path(self.path).name,
            "blob_sha1": self.blob_sha1,
            "url": self.url(),
            "license": self.license,
        }

    def fetch(self, work: Path, token: str | bool | None = None) -> Path:
        """Download the file into ``work`` and check its git blob SHA-1; returns its path.

        A ``<name>.partial`` file that an interrupted call left in ``work`` is resumed. ``token`` is
        ignored: the file is public on GitHub, not on the Hub.

        Raises:
            SourceUnavailable: the file could not be downloaded completely (offline, a timeout, an HTTP
                error, cut short on every attempt); what arrived stays in ``<name>.partial``.
            GHNLoadError: the complete file does not hash to :attr:`blob_sha1`; the download is deleted.
        """
        name = Path(self.path).name
        url, dst, partial = self.url(), Path(work) / name, Path(work) / f"{name}.partial"
        result = download_file(url, dst, partial=partial, desc=name)
        actual = git_blob_sha1(dst)
        if actual != self.blob_sha1 and result.resumed_from:
            logger.warning(
                "%s: the file resumed from an earlier download (%s bytes kept) has git blob SHA-1 %s, expected %s; "
                "downloading it again from the start",
                name,
                result.resumed_from,
                actual,
                self.blob_sha1,
            )
            dst.unlink()
            download_file(url, dst, partial=partial, desc=name)
            actual = git_blob_sha1(dst)
        if actual != self.blob_sha1:
            size = dst.stat().st_size
            dst.unlink()
            raise GHNLoadError(
                f"{self.path} downloaded from {url} is not the pinned file: its git blob SHA-1 is {actual} "
                f"({size:,} bytes, the complete length the server announced), expected {self.blob_sha1} ({self.repo} "
                f"at commit {self.commit}). The download was deleted; nothing was loaded or cached. Fix: retry; if it "
                f"persists, the server or the mirror set in {OFFICIAL_URL_ENV} serves a different or damaged file."
            )
        return dst

    def convert(self, path: Path) -> torch.nn.Module:
        """The GHN in the verified file, read with ``torch.load(weights_only=True)`` only."""
        return ghn_from_reference_checkpoint(path)
