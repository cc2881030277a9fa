"""Every exception ghninit raises on purpose, in one module that any stage may import.

:class:`GHNLoadError` is the one error users catch when a GHN cannot be found, fetched, verified
or loaded; :class:`SourceUnavailable` is the subclass a source raises when it cannot provide a
GHN right now (offline, unreachable, not published there), which lets a known name fall back to
its next source. Integrity failures (a wrong hash, a file ``torch.load(weights_only=True)``
refuses) are plain :class:`GHNLoadError` and never fall back. :class:`TraceError` (a model that
cannot become a GHN graph), :class:`PredictionError` (a predicted tensor that cannot be written;
the model is left untouched) and :class:`ShardedModelError` (a model sharded across processes)
come from the other stages.
"""

from __future__ import annotations


class GHNLoadError(RuntimeError):
    """A GHN could not be loaded; the message says what was tried and how to fix it."""


class SourceUnavailable(GHNLoadError):
    """One source of a known GHN cannot provide it now (offline, unreachable, missing); try the next."""


class TraceError(RuntimeError):
    """Raised when a model cannot be turned into a GHN graph."""


class PredictionError(ValueError):
    """A predicted tensor cannot be written; the model was left untouched."""


class ShardedModelError(TypeError):
    """The model's parameters are sharded across processes; initialise it before wrapping."""
