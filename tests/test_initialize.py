"""initialize(): what it writes, what it keeps, and that a failure leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import LOCAL_FIXTURES

import ghninit

GHN_PATH = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"


@pytest.fixture(scope="module")
def ghn():
    return ghninit.load_ghn(GHN_PATH)


def small_resnet(num_classes=10):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_writes_every_reported_parameter_and_reports(ghn):
    model = small_resnet()
    before = snapshot(model)
    report = ghninit.initialize(model, ghn=ghn)
    assert report.n_tensors_predicted == len(list(model.parameters()))
    assert report.classifier_predicted and report.fraction_predicted == 1.0
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), name
    text = str(report)
    assert "ResNet" in text and "62 tensors" in text and "100.0%" in text
    assert set(report.seconds) == {"graph", "predict", "write", "total"}


def test_predict_does_not_touch_the_model_and_matches_initialize(ghn):
    model = small_resnet()
    before = snapshot(model)
    predicted = ghn.predict(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ghninit.initialize(model, ghn=ghn)
    for name, p in model.named_parameters():
        assert torch.equal(p, predicted[name])


def test_deterministic(ghn):
    a, b = small_resnet(), small_resnet()
    ghninit.initialize(a, ghn=ghn)
    ghninit.initialize(b, ghn=ghn)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_keeps_modes_and_batchnorm_config_and_resets_statistics(ghn):
    model = small_resnet()
    model.eval()
    model.layer1.train()
    model.bn1.momentum = 0.3
    model(torch.randn(2, 3, 32, 32))
    model.layer1[0].bn1.running_mean.fill_(5.0)
    modes = {n: m.training for n, m in model.named_modules()}
    ghninit.initialize(model, ghn=ghn)
    assert modes == {n: m.training for n, m in model.named_modules()}
    assert model.bn1.momentum == 0.3 and model.bn1.track_running_stats
    assert torch.equal(model.layer1[0].bn1.running_mean, torch.zeros(64))
    assert torch.equal(model.layer1[0].bn1.running_var, torch.ones(64))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(ghn, context):
    model = small_resnet()
    with context():
        ghninit.initialize(model, ghn=ghn)
    assert all(p.requires_grad for p in model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # still trainable


def test_classifier_kept_when_classes_differ(ghn):
    model = small_resnet(num_classes=7)
    fc = model.fc.weight.detach().clone()
    report = ghninit.initialize(model, ghn=ghn)
    assert torch.equal(model.fc.weight, fc) and not report.classifier_predicted
    assert "fc.weight" in report.skipped and "fc.bias" in report.skipped
    ghninit.initialize(model, ghn=ghn, keep_classifier=False)
    assert not torch.equal(model.fc.weight, fc)


def test_keep_classifier_encodes_it_with_the_ghn_classes(ghn):
    """Keeping the classifier of a 7-class model predicts the rest as for a 10-class one."""
    seven, ten = small_resnet(7), small_resnet(10)
    ghninit.initialize(seven, ghn=ghn, keep_classifier=True)
    ghninit.initialize(ten, ghn=ghn, keep_classifier=True)
    assert torch.equal(seven.layer4[1].conv2.weight, ten.layer4[1].conv2.weight)


def test_failed_prediction_leaves_model_untouched(ghn):
    broken = ghninit.load_ghn(GHN_PATH)
    with torch.no_grad():
        broken.decoder_1d.fc[2].bias.fill_(float("nan"))
    model = small_resnet()
    before = snapshot(model)
    with pytest.raises(ghninit.PredictionError, match="NaN"):
        ghninit.initialize(model, ghn=broken)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_uncovered_parameters_keep_their_init_and_are_listed(ghn):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    gn = model[1].weight.detach().clone()
    report = ghninit.initialize(model, ghn=ghn)
    assert torch.equal(model[1].weight, gn)
    assert "1.weight" in report.skipped and "GroupNorm" in report.skipped["1.weight"]
    assert report.n_tensors_predicted == 4


def test_needs_a_ghn():
    with pytest.raises(ValueError, match="dataset="):
        ghninit.initialize(small_resnet())


def test_embed_graph(ghn):
    graph = ghninit.build_graph(small_resnet())
    emb = ghn.embed_graph(graph)
    assert emb.shape == (32,) and torch.isfinite(emb).all()
    other = ghn.embed_graph(ghninit.build_graph(torchvision.models.mobilenet_v2(num_classes=10)))
    assert not torch.allclose(emb, other)
