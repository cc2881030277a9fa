"""Shared test helpers: where the reference fixtures live, and skipping when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
SHARED_DIR = Path(os.environ.get("GHNINIT_SHARED", REPO_DIR.parent / "shared"))
REFERENCE_DIR = SHARED_DIR / "fixtures" / "ghn2_reference"
LOCAL_FIXTURES = TESTS_DIR / "fixtures"

requires_shared = pytest.mark.skipif(not REFERENCE_DIR.is_dir(), reason=f"{REFERENCE_DIR} not found (../shared absent)")


def reference_file(name: str) -> Path:
    """A reference fixture: the copy in tests/fixtures if there is one, else ../shared; skip if neither."""
    for folder in (LOCAL_FIXTURES, REFERENCE_DIR):
        if (folder / name).exists():
            return folder / name
    pytest.skip(f"fixture {name} is neither in {LOCAL_FIXTURES} nor in {REFERENCE_DIR}")


def init_quietly(model, ghn, **kwargs):
    """``ghninit.initialize`` with its UserWarnings (the low-coverage one) silenced: tests of those
    warnings check them on their own."""
    import warnings

    import ghninit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ghninit.initialize(model, ghn=ghn, **kwargs)
