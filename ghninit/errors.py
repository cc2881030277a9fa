"""Exceptions raised when a GHN cannot be found, fetched, verified or loaded.

:class:`GHNLoadError` is the one error users catch; :class:`SourceUnavailable` is the subclass a
source raises when it cannot provide a GHN right now (offline, unreachable, not published there),
which lets a known name fall back to its next source. Integrity failures (a wrong hash, a file
``torch.load(weights_only=True)`` refuses) are plain :class:`GHNLoadError` and never fall back.
"""

from __future__ import annotations


class GHNLoadError(RuntimeError):
    """A GHN could not be loaded; the message says what was tried and how to fix it."""


class SourceUnavailable(GHNLoadError):
    """One source of a known GHN cannot provide it now (offline, unreachable, missing); try the next."""
