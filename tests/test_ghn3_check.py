"""``python -m ghninit check``: published parameter norms, and the check itself on reference data."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import REPO_DIR
from ghn3_parity import ghn3_file, load_fixture

from ghninit.zoo.check import CheckResult, check_paramnorm, published, published_paramnorm
from ghninit.zoo.ghn3_weights import GHN3_WEIGHTS


def test_published_figures_and_table_agree():
    data = published()
    assert data["source"]["md5"] == "c9ffc3b9222e872af316eb1cb1ee1c08"
    assert len(data["paramnorm"]["ghn3-xl"]) == len(data["paramnorm"]["ghn3-t"]) == 74
    assert published_paramnorm("ghn3-xl", "resnet50") == pytest.approx(108.4530)
    for name in ("ghn3-t", "ghn3-xl"):
        assert GHN3_WEIGHTS[name].resnet50_top1 == data["top1"][name]["resnet50"]
    sgd = data["sgd1ep_top1"]  # the averages: 25.4% from GHN-3 against 17.4% from random starts
    assert round(sum(sgd["ghn3-xl"].values()) / 74, 1) == 25.4
    assert round(sum(sgd["random"].values()) / 74, 1) == 17.4
    with pytest.raises(KeyError, match="ghn3-t, ghn3-xl"):
        published_paramnorm("ghn3-l", "resnet50")


def test_check_reproduces_the_reference_norm_of_a_fixture():
    """With the random GHN-3-T, the norm must equal the one implied by the reference fixture's sums of squares."""
    weights, fixture_path = ghn3_file("ghn3tm8_random.safetensors"), ghn3_file("ghn3tm8_random__resnet50.json")
    if weights is None or fixture_path is None:
        pytest.skip("GHN-3 reference fixtures absent")
    fixture = load_fixture(fixture_path)
    assert all(p["predicted"] for p in fixture["params"].values())
    reference_norm = math.sqrt(sum(p["sq_sum"] for p in fixture["params"].values()))
    result = check_paramnorm("ghn3-t", "resnet50", weights)
    assert result.predicted_fraction == 1
    assert result.norm == pytest.approx(reference_norm, rel=1e-5)
    assert not result.passed  # random weights are not the published GHN-3-T
    assert CheckResult("ghn3-t", "resnet50", reference_norm, reference_norm + 1e-3, 1.0).passed


def test_cli_reports_and_sets_exit_status():
    weights = ghn3_file("ghn3tm8_random.safetensors")
    if weights is None:
        pytest.skip("GHN-3 reference fixtures absent")
    cmd = [sys.executable, "-m", "ghninit", "check", "ghn3-t", "resnet18", "--weights", str(weights)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_DIR, timeout=300)
    assert out.returncode == 1 and out.stdout.startswith("FAIL: ghn3-t on resnet18"), out.stderr[-2000:]
    help_out = subprocess.run(
        [sys.executable, "-m", "ghninit", "check", "--help"], capture_output=True, text=True, cwd=REPO_DIR
    )
    assert help_out.returncode == 0 and "published" in help_out.stdout
