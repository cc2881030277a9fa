"""Tracing with an example input: the same GHN graph as symbolic tracing, and models symbolic tracing cannot follow.

The two paths must agree node for node (in order) and edge for edge, real and virtual, on every
GHN-2 and GHN-3 parity fixture; detectors and Hugging Face models go through ``initialize`` with
an inferred example input; a model on the ``meta`` device is traced on meta tensors.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import LOCAL_FIXTURES, REFERENCE_DIR, SHARED_DIR
from parity import build_model

import ghninit
from ghninit.errors import TraceError
from ghninit.graph.build import GHN2_RULES, GHN3_RULES, build_graph
from ghninit.graph.example_inputs import infer_example_inputs
from ghninit.graph.trace import trace

GHN_FILE = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"


def _fixtures() -> list:
    """One parity fixture per (model, data set, rules): the shared ones, else the local copies."""
    paths = sorted(REFERENCE_DIR.glob("*__*.json")) + sorted(
        (SHARED_DIR / "fixtures" / "ghn3_reference").glob("*__*.json")
    )
    paths = paths or sorted(LOCAL_FIXTURES.glob("*__*.json"))
    seen, out = set(), []
    for path in paths:
        fixture = json.loads(path.read_text())
        rules = "ghn3" if path.name.startswith("ghn3") else "ghn2"
        key = (fixture["construct"], fixture["dataset"], rules)
        if key not in seen:
            seen.add(key)
            out.append(pytest.param(path, rules, id=path.stem))
    return out


def _side(fixture: dict) -> int:
    """The input size the fixture's model was made for."""
    return 32 if fixture["dataset"] == "cifar10" else 224


def _assert_same_graph(a, b) -> None:
    fields = lambda g: [(n.name, n.primitive, n.shape, n.module, n.param, n.bias, n.param_shape) for n in g.nodes]  # noqa: E731
    assert fields(a) == fields(b)
    assert np.array_equal(a.edges, b.edges)  # real and virtual edges, by index
    assert a.uncovered == b.uncovered
    assert a.output_classes == b.output_classes


@pytest.mark.parametrize("path,rules", _fixtures())
def test_both_paths_give_the_same_graph_on_parity_fixtures(path, rules):
    fixture = json.loads(path.read_text())
    with torch.device("meta"):  # the graph needs no weights: the example runs on meta tensors, in no time
        model = build_model(fixture)
    rule_set = GHN3_RULES if rules == "ghn3" else GHN2_RULES
    side = _side(fixture)
    symbolic = build_graph(model, rules=rule_set)
    example = build_graph(model, rules=rule_set, example_inputs=torch.randn(1, 3, side, side, device="meta"))
    assert (symbolic.tracing, example.tracing) == ("symbolic", "example input")
    _assert_same_graph(symbolic, example)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x0_5"])
def test_both_paths_give_the_same_graph_on_torchvision_models(name):
    model = torchvision.models.get_model(name)
    for rules in (GHN2_RULES, GHN3_RULES):
        _assert_same_graph(
            build_graph(model, rules=rules), build_graph(model, rules=rules, example_inputs=torch.randn(1, 3, 64, 64))
        )


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224", "convnext_atto", "mobilevit_xxs"])
def test_both_paths_give_the_same_graph_on_timm_models(name):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False)
    example = infer_example_inputs(model)
    assert example[0].shape == (1, *model.pretrained_cfg["input_size"])
    for rules in (GHN2_RULES, GHN3_RULES):
        _assert_same_graph(build_graph(model, rules=rules), build_graph(model, rules=rules, example_inputs=example))


def test_both_paths_predict_the_same_parameters():
    ghn = ghninit.load_ghn(GHN_FILE)
    torch.manual_seed(0)
    a = torchvision.models.resnet18(num_classes=10)
    b = copy.deepcopy(a)
    ra = ghninit.initialize(a, ghn=ghn)
    rb = ghninit.initialize(b, ghn=ghn, example_inputs=(torch.randn(2, 3, 32, 32),))
    assert (ra.tracing, rb.tracing) == ("symbolic", "example input")
    assert ra.predicted == rb.predicted and ra.predicted
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_detector_is_initialised_through_the_example_input_path():
    ghn = ghninit.load_ghn(GHN_FILE)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    anchors = model.rpn.anchor_generator.cell_anchors
    assert model.training
    report = ghninit.initialize(model, ghn=ghn)
    assert report.tracing == "example input"
    assert "example input" in str(report)
    assert report.fraction_predicted > 0.5
    assert any(name.startswith("backbone.body.") for name in report.predicted)
    assert any(name.startswith("backbone.fpn.") for name in report.predicted)
    assert any(name.startswith(("rpn.head.", "roi_heads.")) for name in report.predicted)
    assert all(isinstance(why, str) and why for why in report.skipped.values())
    assert set(report.predicted).isdisjoint(report.skipped)
    # the example run left the model as it was: training mode, cached anchors, no proxies
    assert model.training and all(m.training for m in model.modules())
    assert model.rpn.anchor_generator.cell_anchors is anchors
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 160, 160)])
    assert isinstance(out[0]["boxes"], torch.Tensor)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _tiny_vit(**extra):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        num_labels=10, **extra,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def test_transformers_vit_is_initialised_through_the_example_input_path():
    ghn = ghninit.load_ghn(GHN_FILE)
    torch.manual_seed(0)
    model = _tiny_vit()
    with pytest.raises(TraceError):
        trace(model)  # symbolic tracing alone fails on it
    report = ghninit.initialize(model, ghn=ghn)
    assert report.tracing == "example input"
    assert report.fraction_predicted > 0.5
    assert report.classifier_predicted  # 10 classes, as the CIFAR-10 GHN
    assert "classifier.weight" in report.predicted
    assert any(".attention." in name and name.endswith(".weight") for name in report.predicted)
    with torch.no_grad():
        logits = model(pixel_values=torch.rand(2, 3, 32, 32)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_meta_device_model_is_traced_on_meta_tensors():
    ghn = ghninit.load_ghn(GHN_FILE)
    with torch.device("meta"):
        model = _tiny_vit()
    example = infer_example_inputs(model)
    assert example["pixel_values"].device.type == "meta" and example["pixel_values"].shape == (1, 3, 32, 32)
    graph = build_graph(model)
    assert graph.tracing == "example input"
    report = ghninit.initialize(model, ghn=ghn, device="cpu")
    assert report.tracing == "example input" and report.materialized_on == "cpu"
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


class _ValueBranch(nn.Module):
    """Control flow on a value: symbolic tracing cannot follow it; the first layer is a Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x):
        h = self.fc1(x).relu()
        if h.sum() > -1e9:
            h = h + 1
        return self.fc2(h)


def test_no_inferable_input_asks_for_example_inputs():
    with pytest.raises(TraceError, match="example_inputs="):
        build_graph(_ValueBranch())
    graph = build_graph(_ValueBranch(), example_inputs=torch.randn(1, 8))
    assert graph.tracing == "example input"
    assert [n.param for n in graph.nodes if n.param] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_example_run_leaves_statistics_and_random_state_alone():
    model = torchvision.models.resnet18(num_classes=10)
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    x = torch.randn(2, 3, 32, 32)
    state = torch.random.get_rng_state()
    build_graph(model, example_inputs=x)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert model.training
    assert all(a is b for a, b in zip(params, model.parameters()))  # the meta stand-ins were put back
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_wrong_example_inputs_name_the_forward_arguments():
    with pytest.raises(TypeError, match="does not take"):
        build_graph(torchvision.models.resnet18(), example_inputs={"pixels": torch.randn(1, 3, 32, 32)})


class _TanhHead(nn.Module):
    """A head of pooling, LayerNorm, Linear, Tanh and a bias-free Linear."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 16), nn.Tanh(),
            nn.Linear(16, classes, bias=False),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(self.stem(x))


def test_ghn3_predicts_the_hidden_head_layer_when_the_output_layer_matches_its_classes():
    with torch.device("meta"):
        ghn3 = ghninit.GHN3(max_shape=(64, 64, 16, 16), num_classes=1000, hid=32, layers=1, heads=4)
    graph = build_graph(_TanhHead(1000), rules=GHN3_RULES)
    weight, bias = graph.classifier
    assert graph.nodes[weight].param == "classifier.3.weight"  # the classifier's place, as in the reference
    assert graph.output_classes == 1000 and ghn3.classifier_matches(graph)
    assert not ghn3.classifier_matches(build_graph(_TanhHead(10), rules=GHN3_RULES))
    assert build_graph(_TanhHead(1000), rules=GHN2_RULES).output_classes is None


def test_pennfudan_takes_a_torchvision_detector():
    import sys

    from conftest import REPO_DIR

    sys.path.insert(0, str(REPO_DIR / "benchmarks"))
    import finetune_pennfudan

    model = finetune_pennfudan.torchvision_detector("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", 320, 64)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.transform.max_size == 320 and model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    with pytest.raises(SystemExit, match="torchvision:NAME"):
        finetune_pennfudan.torchvision_detector("torchvision:resnet50", None, 512)
    args = finetune_pennfudan.parse_args(["--detector", "torchvision:ssdlite320_mobilenet_v3_large", "--quick"])
    assert args.detector == "torchvision:ssdlite320_mobilenet_v3_large"
