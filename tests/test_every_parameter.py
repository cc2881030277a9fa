"""Every parameter of the user's model (issue 20): all outputs, parametrized and lazy layers, 3-D convolutions.

Small models, small inputs, and the random-weight CIFAR-10 GHN-2 of tests/fixtures: each row of the
issue's table has a test here; the parity fixtures (tests/test_parity.py, test_ghn3_parity.py)
prove that single-output graphs did not change.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import LOCAL_FIXTURES, init_quietly
from torch.nn.utils import parametrizations, parametrize

import ghninit
from ghninit.errors import TraceError
from ghninit.graph.build import GHN3_RULES, build_graph
from ghninit.report import INFLATION_RULE
from ghninit.write.tensors import inflate

GHN_PATH = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"


@pytest.fixture(scope="module")
def ghn():
    return ghninit.load_ghn(GHN_PATH)


_init = init_quietly


def _predicted(ghn, model: nn.Module) -> dict[str, torch.Tensor]:
    """What the GHN predicts for ``model`` (parameter name -> full tensor), computed apart from initialize."""
    graph = build_graph(model, virtual_edge_cutoff=50 if ghn.ve else 1)
    with torch.no_grad():
        return ghn(graph, ghn.classifier_matches(graph))


# ------------------------------------------------------------------------------------------------
# 1. every output


class TwoHeads(nn.Module):
    """A backbone with a classification head and a box head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.cls_head = nn.Linear(16, 10)
        self.box_head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        f = self.body(x)
        return self.cls_head(f.mean((2, 3))), self.box_head(f)


@dataclasses.dataclass
class Detections:
    logits: torch.Tensor
    boxes: torch.Tensor


class DataclassHeads(TwoHeads):
    def forward(self, x):
        logits, boxes = super().forward(x)
        return Detections(logits, boxes)


class DictHeads(TwoHeads):
    def forward(self, x):
        logits, boxes = super().forward(x)
        return {"logits": logits, "boxes": boxes}


@pytest.mark.parametrize("model_type", [TwoHeads, DataclassHeads, DictHeads])
def test_two_head_model_gets_both_heads(ghn, model_type):
    model = model_type()
    graph = build_graph(model)
    assert graph.n_outputs == 2
    sink = graph.nodes[-1]
    assert sink.primitive == "concat" and sink.param is None
    into_sink = {graph.nodes[s].name for s, d in graph.real_edges[:, :2] if d == len(graph) - 1}
    assert into_sink == {"cls_head.bias", "box_head.bias"}
    assert graph.classifier == (None, None)
    before = {n: p.clone() for n, p in model.named_parameters()}
    report = _init(model, ghn)
    for name in ("cls_head.weight", "cls_head.bias", "box_head.weight", "box_head.bias"):
        assert name in report.predicted
        assert not torch.equal(before[name], model.get_parameter(name))
    assert report.fraction_predicted == 1.0
    assert report.n_outputs == 2 and "joining 2 outputs" in str(report)


class OneOutput(TwoHeads):
    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def forward(self, x):
        logits = self.cls_head(self.body(x).mean((2, 3)))
        return self.wrap(logits)


@pytest.mark.parametrize("wrap", [lambda y: y, lambda y: (y,), lambda y: {"out": y}, lambda y: [y]])
def test_one_output_in_a_container_is_the_single_output_graph(wrap):
    plain = build_graph(OneOutput(lambda y: y), rules=GHN3_RULES)
    wrapped = build_graph(OneOutput(wrap), rules=GHN3_RULES)
    assert wrapped.n_outputs == 1
    assert [(n.name, n.primitive, n.shape) for n in wrapped.nodes] == [
        (n.name, n.primitive, n.shape) for n in plain.nodes
    ]
    assert (wrapped.edges == plain.edges).all()
    assert wrapped.classifier == plain.classifier != (None, None)


TIMM_FAMILIES = [
    "resnet18",
    "convnext_atto",
    "efficientnet_b0",
    "swin_tiny_patch4_window7_224",
    "regnetx_002",
    "mobilenetv3_small_050",
    "densenet121",
    "dla34",
    "ghostnet_050",
    "mobilevit_xxs",
    "efficientvit_b0",
    "xception41",  # a FeatureHookNet: its outputs are collected by forward hooks
]


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_features_only_backbones_are_predicted(ghn, name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, features_only=True, pretrained=False)
    report = _init(model, ghn)
    assert report.fraction_predicted >= 0.9, (name, report.skipped_families[:3])
    assert not report.low_coverage


def test_torchvision_feature_extractor_is_predicted(ghn):
    from torchvision.models import mobilenet_v3_small, resnet18
    from torchvision.models.feature_extraction import create_feature_extractor

    for backbone, nodes in (
        (resnet18(), {"layer2": "f2", "layer4": "f4"}),
        (mobilenet_v3_small(), {"features.3": "c3", "features.8": "c4", "features.12": "c5"}),
    ):
        model = create_feature_extractor(backbone, nodes)
        graph = build_graph(model)
        assert graph.n_outputs == len(nodes)
        report = _init(model, ghn)
        assert report.fraction_predicted >= 0.9, report.skipped_families[:3]


# ------------------------------------------------------------------------------------------------
# 2. no quiet near-empty result


class MostlyBilinear(nn.Module):
    """Mostly a layer type with no GHN rule (nn.Bilinear), which runs on the path to the output."""

    def __init__(self):
        super().__init__()
        self.pair = nn.Bilinear(12, 12, 128)
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        f = x.flatten(1)[:, :12]
        a = self.pair(f, f)
        return a.sum(1, keepdim=True) + self.conv(x).mean((1, 2, 3))[:, None]


def test_warns_when_less_than_half_is_predicted(ghn):
    with pytest.warns(UserWarning, match=r"only \d+\.\d% .*Bilinear .*no GHN rule for torch\.nn\.Bilinear") as caught:
        report = ghninit.initialize(MostlyBilinear(), ghn=ghn)
    assert len([w for w in caught if "ghninit.initialize" in str(w.message)]) == 1
    assert report.low_coverage and report.fraction_predicted < 0.5
    assert report.skipped_families[0][0] == "Bilinear"
    assert str(report).splitlines()[0].startswith("ghninit: WARNING: only ")


def test_no_warning_at_half_or_more(ghn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = ghninit.initialize(TwoHeads(), ghn=ghn)
    assert not report.low_coverage
    assert str(report).startswith("ghninit: TwoHeads initialised")


# ------------------------------------------------------------------------------------------------
# 3. parametrized weights


class SmallNet(nn.Module):
    def __init__(self, hidden: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.hidden = nn.Linear(16, hidden)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(F.relu(self.hidden(x)))


def test_weight_norm_computes_the_predicted_weight(ghn):
    model = SmallNet()
    parametrizations.weight_norm(model.conv)
    parametrizations.weight_norm(model.fc)
    expected = _predicted(ghn, model)
    report = _init(model, ghn)
    assert report.fraction_predicted == 1.0
    assert set(report.parametrized) == {"conv.weight", "fc.weight"}
    assert "conv.parametrizations.weight.original0" in report.predicted
    for name in ("conv.weight", "fc.weight"):
        torch.testing.assert_close(model.get_submodule(name[:-7]).weight, expected[name], rtol=0, atol=1e-6)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_spectral_norm_computes_the_predicted_weight_over_its_norm(ghn, mode):
    model = SmallNet()
    parametrizations.spectral_norm(model.fc)
    parametrizations.spectral_norm(model.conv)
    expected = _predicted(ghn, model)
    _init(model, ghn)
    getattr(model, mode)()
    for name in ("fc.weight", "conv.weight"):
        w = expected[name].double()
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        with torch.no_grad():
            effective = model.get_submodule(name[:-7]).weight  # a train-mode access runs a power iteration
        torch.testing.assert_close(effective.double(), w / sigma, rtol=0, atol=1e-6)


def test_orthogonal_computes_the_orthogonal_factor_of_the_prediction(ghn):
    model = SmallNet(hidden=16)
    parametrizations.orthogonal(model.hidden)
    expected = _predicted(ghn, model)["hidden.weight"]
    report = _init(model, ghn)
    assert report.parametrized["hidden.weight"] == ["_Orthogonal"]
    q, r = torch.linalg.qr(expected.double())
    q = q * torch.diagonal(r).sign()
    torch.testing.assert_close(model.hidden.weight.double(), q, rtol=0, atol=1e-5)


class Doubled(nn.Module):
    def forward(self, x):
        return 2 * x

    def right_inverse(self, w):
        return w / 2


class Symmetric(nn.Module):  # no right_inverse
    def forward(self, x):
        return x.triu() + x.triu(1).transpose(0, 1)


def test_users_own_parametrizations(ghn):
    model = SmallNet(hidden=16)
    parametrize.register_parametrization(model.fc, "weight", Doubled())
    parametrize.register_parametrization(model.hidden, "weight", Symmetric())
    own = model.hidden.parametrizations.weight.original.clone()
    expected = _predicted(ghn, model)
    report = _init(model, ghn)
    torch.testing.assert_close(model.fc.weight, expected["fc.weight"], rtol=0, atol=1e-6)
    assert report.parametrized == {"fc.weight": ["Doubled"]}
    assert torch.equal(model.hidden.parametrizations.weight.original, own)
    why = report.skipped["hidden.parametrizations.weight.original"]
    assert "Symmetric" in why and "no right_inverse" in why
    assert "hidden.weight" not in report.skipped and "hidden.bias" in report.predicted


def test_a_failed_write_leaves_parametrized_model_untouched(ghn, monkeypatch):
    model = SmallNet(hidden=16)
    parametrizations.orthogonal(model.hidden)  # its right_inverse replaces a buffer (base)
    parametrizations.weight_norm(model.conv)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(module, ready):
        raise RuntimeError("injected failure at write time")

    monkeypatch.setattr("ghninit.initializer.write", broken)
    with pytest.raises(RuntimeError, match="injected"):
        _init(model, ghn)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


# ------------------------------------------------------------------------------------------------
# 4. lazy modules


def test_lazy_head_is_materialised_with_an_image_of_the_ghn_input_size(ghn):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.LazyLinear(10))
    report = _init(model, ghn)
    assert model[4].weight.shape == (10, 128)
    assert "(1, 3, 32, 32)" in report.lazy
    assert "4.weight" in report.predicted and report.fraction_predicted == 1.0


class Grayscale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.head = nn.LazyLinear(10)

    def forward(self, x, scale: float = 1.0):
        return self.head(self.conv(x).flatten(1)) * scale


def test_lazy_model_that_needs_another_input_is_refused_with_how_to_fix(ghn):
    model = Grayscale()
    with pytest.raises(TraceError, match=r"(?s)'head'.*example_inputs="):
        _init(model, ghn)
    assert isinstance(model.head, nn.LazyLinear)  # still lazy: nothing done


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_lazy_model_with_example_inputs(ghn, form):
    x = torch.randn(1, 1, 12, 12)
    example = {"tensor": x, "tuple": (x, 2.0), "dict": {"x": x, "scale": 2.0}}[form]
    model = Grayscale()
    report = _init(model, ghn, example_inputs=example)
    assert model.head.weight.shape == (10, 800)
    assert report.lazy == "one forward pass on example_inputs"
    assert "head.weight" in report.predicted


# ------------------------------------------------------------------------------------------------
# 5. 3-D convolutions


def test_inflation_rule_on_a_hand_made_kernel():
    kernel = torch.arange(2 * 3 * 3 * 3, dtype=torch.float64).reshape(2, 3, 3, 3) - 20
    inflated = inflate(kernel, 4)
    assert inflated.shape == (2, 3, 4, 3, 3)
    for t in range(4):
        assert torch.equal(inflated[:, :, t], kernel / 4)
    # I3D's property: on a video whose frames are one image, the 3-D conv is the 2-D conv of it
    image = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    video = image[:, :, None].expand(-1, -1, 4, -1, -1)
    torch.testing.assert_close(F.conv3d(video, inflated)[:, :, 0], F.conv2d(image, kernel))
    with pytest.raises(ValueError):
        inflate(kernel[0], 2)


class TinyVideo(nn.Module):
    """A (2+1)-D block, a depthwise separable 3-D conv, BatchNorm3d and a 3-D pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, (3, 5, 5), padding=(1, 2, 2), bias=False)
        self.bn = nn.BatchNorm3d(8)
        self.spatial = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0))
        self.depthwise = nn.Conv3d(8, 8, 3, padding=1, groups=8)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.depthwise(self.temporal(self.spatial(x)))
        return self.fc(self.pool(x).flatten(1))


def test_conv3d_is_predicted_as_its_2d_counterpart_and_inflated(ghn):
    model = TinyVideo()
    graph = build_graph(model)
    shapes = {n.param: (n.primitive, n.shape) for n in graph.nodes if n.param}
    assert shapes["stem.weight"] == ("conv", (8, 3, 5, 5))
    assert shapes["temporal.weight"] == ("conv", (8, 8, 1, 1))
    assert shapes["depthwise.weight"] == ("sep_conv", (8, 1, 3, 3))
    assert shapes["bn.weight"][0] == "bn"
    assert any(n.primitive == "glob_avg" for n in graph.nodes)
    expected = _predicted(ghn, model)
    report = _init(model, ghn)
    assert report.fraction_predicted == 1.0
    assert sorted(report.inflated) == ["depthwise.weight", "spatial.weight", "stem.weight", "temporal.weight"]
    assert INFLATION_RULE in str(report)
    for name in report.inflated:
        weight = model.get_parameter(name)
        torch.testing.assert_close(weight, inflate(expected[name], weight.shape[2]), rtol=0, atol=0)
    assert torch.isfinite(model(torch.randn(2, 3, 4, 16, 16))).all()


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18", "s3d"])
def test_torchvision_video_cnns(ghn, name):
    from torchvision.models import video

    model = getattr(video, name)(num_classes=10)
    report = _init(model, ghn)
    assert report.fraction_predicted >= 0.9, report.skipped_families[:3]
    assert report.inflated
    size = (1, 3, 16, 224, 224) if name == "s3d" else (1, 3, 4, 32, 32)  # S3D's last pool needs 2x7x7
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(size))).all()


def _small_video_transformers():
    from torchvision.models.video import mvit
    from torchvision.models.video.swin_transformer import SwinTransformer3d

    blocks = [
        mvit.MSBlockConfig(1, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 4, 4]),
        mvit.MSBlockConfig(2, 32, 64, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 2, 2]),
        mvit.MSBlockConfig(2, 64, 64, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
    ]
    common = dict(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, num_classes=10)
    return {
        "mvit_v1": mvit.MViT(
            **common, residual_pool=False, residual_with_cls_embed=True, rel_pos_embed=False, proj_after_attn=False
        ),
        "mvit_v2": mvit.MViT(
            **common, residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True
        ),
        "swin3d": SwinTransformer3d([2, 4, 4], 24, [2, 2], [2, 4], [2, 4, 4], num_classes=10),
    }


@pytest.mark.parametrize("name", ["mvit_v1", "mvit_v2", "swin3d"])
def test_torchvision_video_transformers(ghn, name):
    model = _small_video_transformers()[name]  # torchvision's classes, small settings
    report = _init(model, ghn)
    assert report.fraction_predicted >= 0.9, report.skipped_families[:3]
    assert report.inflated
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 4, 32, 32))).all()
