"""The examples run end to end (with the small random GHN kept in tests/fixtures)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import LOCAL_FIXTURES, REPO_DIR

GHN = str(LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors")


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_DIR / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_DIR,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart_torchvision():
    out = run("quickstart_torchvision.py", "--ghn", GHN, "--model", "resnet18", "--num-classes", "10")
    assert "initialised by" in out and "forward pass OK: logits (2, 10)" in out


def test_timm_training_loop():
    pytest.importorskip("timm")
    out = run("timm_training_loop.py", "--ghn", GHN, "--model", "resnet18", "--steps", "5")
    assert "ResNet initialised" in out and "step   5" in out


def test_quickstart_without_network_fails_clearly():
    result = subprocess.run(
        [sys.executable, str(REPO_DIR / "examples" / "quickstart_torchvision.py"), "--ghn", "no-such-thing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "no-such-thing" in result.stderr
