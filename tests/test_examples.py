"""The examples run end to end (with the small random GHN kept in tests/fixtures)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import LOCAL_FIXTURES, REPO_DIR, SHARED_DIR, requires_shared

GHN = str(LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors")


def run(script: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_DIR / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_DIR,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart_torchvision():
    out = run("quickstart_torchvision.py", "--ghn", GHN, "--model", "resnet18", "--num-classes", "10")
    assert "initialised by" in out and "forward pass OK: logits (2, 10)" in out


def test_quickstart_default_is_the_shipped_ghn_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    out = run("quickstart_torchvision.py", env=env)
    assert "ResNet initialised by cifar10-mini" in out and "forward pass OK: logits (2, 10)" in out


@requires_shared
def test_quickstart_reports_accuracy_before_training():
    out = run("quickstart_torchvision.py", "--data-dir", str(SHARED_DIR / "data" / "cifar10-jpeg"))
    ghn_top1, default_top1 = (float(x) for x in re.findall(r"([0-9.]+)% with", out))
    assert ghn_top1 > default_top1 + 3.0, out


def test_timm_training_loop():
    pytest.importorskip("timm")
    out = run("timm_training_loop.py", "--ghn", GHN, "--model", "resnet18", "--steps", "5")
    assert "ResNet initialised" in out and "post-processed" in out  # the GHN start, then the post-processed one
    last = next(line for line in out.splitlines() if line.startswith("   5  "))
    assert len(last.split()) == 4  # step, then the loss of timm's, the GHN's and the post-processed start


def test_quickstart_without_network_fails_clearly():
    result = subprocess.run(
        [sys.executable, str(REPO_DIR / "examples" / "quickstart_torchvision.py"), "--ghn", "no-such-thing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "no-such-thing" in result.stderr
