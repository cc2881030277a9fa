"""Graph rules that raise the share of parameters predicted, and a CI sample of the all-timm run.

benchmarks/coverage.py --all-timm goes through every timm architecture (long); this checks the
families it found under 90% before the rules existed, built on the meta device (no memory).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO_DIR, reference_file

import ghninit

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
import coverage  # noqa: E402

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def ghn():
    return ghninit.load_ghn(reference_file("ghn2_imagenet_random.safetensors"))


@pytest.mark.parametrize(
    "name, before",
    [
        ("nfnet_f0", 11.0),  # NormFreeBlock: timm notrace (an in-place mul_), traced into
        ("eca_nfnet_l0", 24.6),
        ("beit_base_patch16_224", 75.3),  # attention calls F.linear(x, self.qkv.weight, ...)
        ("mobilevit_xxs", 20.0),  # MobileVitBlock: untraceable, described as its sub-layer chain
        ("tiny_vit_5m_224", 2.7),  # TinyVitBlock: likewise
    ],
)
def test_timm_families_now_predicted(ghn, name, before):
    row = coverage.measure_meta(name, ghn)
    assert row["error"] is None, row
    assert row["percent_predicted"] > 99.0 > before, row


def test_all_timm_sample_report(ghn, tmp_path):
    out = tmp_path / "timm.md"
    coverage.run_all_timm(ghn, 3, out, "coverage.py --all-timm --limit 3")
    text = out.read_text()
    assert "- architectures: 3; through: 3; failed: 0" in text


def test_functional_linear_on_a_parameter_is_a_layer(ghn):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.proj = nn.Linear(8, 8)
            self.fc = nn.Linear(8, 1000)

        def forward(self, x):
            x = self.conv(x).mean((2, 3))
            return self.fc(F.linear(x, self.proj.weight, self.proj.bias))

    graph = ghninit.build_graph(Functional())
    assert [n.name for n in graph.nodes if n.param] == [
        "conv.weight", "conv.bias", "proj.weight", "proj.bias", "fc.weight", "fc.bias"
    ]  # fmt: skip
    report = ghninit.initialize(Functional(), ghn=ghn)
    assert report.fraction_predicted == 1.0


def test_user_leaf_modules_stay_leaves_even_for_timm_notrace_types():
    from timm.models.nfnet import NormFreeBlock

    from ghninit.graph.trace import trace

    with torch.device("meta"):
        model = timm.create_model("nfnet_f0")
    called = lambda graph: {n.target for n in graph.nodes if n.op == "call_module"}  # noqa: E731
    assert "stages.0.0" not in called(trace(model)) and "stages.0.0.conv1" in called(trace(model))
    assert "stages.0.0" in called(trace(model, [NormFreeBlock]))


def test_recurrent_layers_are_predicted(ghn):
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3)
            self.lstm = nn.LSTM(16, 8, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(16, 1000)

        def forward(self, x):
            x = self.conv(x).flatten(2).transpose(1, 2)
            x, _ = self.lstm(x)
            return self.fc(x.mean(1))

    model = Recurrent()
    report = ghninit.initialize(model, ghn=ghn)
    assert report.fraction_predicted == 1.0 and "lstm.weight_hh_l0_reverse" in report.predicted
    assert torch.isfinite(model(torch.randn(2, 3, 8, 8))).all()


def test_optional_forward_arguments_take_their_defaults(ghn):
    class MaskedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 1000)

        def forward(self, x, mask=None, pre_logits: bool = False):
            x = self.conv(x).mean((2, 3))
            if mask is None and not pre_logits:
                x = self.fc(x)
            return x

    report = ghninit.initialize(MaskedHead(), ghn=ghn)
    assert report.fraction_predicted == 1.0 and report.classifier_predicted


def test_transposed_convolutions_are_predicted(ghn):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1000),
    )
    report = ghninit.initialize(model, ghn=ghn)
    assert report.fraction_predicted == 1.0 and "1.weight" in report.predicted
