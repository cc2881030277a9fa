"""Post-processing of initial parameters (ghninit.write.postprocess): orthogonality, what is left alone, determinism."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from conftest import LOCAL_FIXTURES

import ghninit
from ghninit.write.postprocess import Orthogonalize, plan, resolve_postprocess


class Net(nn.Module):
    """conv (wide and tall), norm layers, attention and a classifier: every case the module handles."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)  # 16 x 27: wide
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 64, 1)  # 64 x 16: tall
        self.ln = nn.LayerNorm(64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        tokens = self.ln(x.flatten(2).transpose(1, 2))
        tokens = tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return self.fc(tokens.mean(1))


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial norm parameters, to see they are left alone
        for p in (net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias):
            p.uniform_(0.5, 1.5)
    return net


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def singular_values(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(w.detach().reshape(w.shape[0], -1).double())


@pytest.mark.parametrize("scale", ["orthogonal", "he"])
def test_weights_become_semi_orthogonal_with_the_asked_norm(scale):
    net = make_net()
    changed = ghninit.orthogonalize_(net, noise=0.0, scale=scale)
    assert changed == ["conv1.weight", "conv2.weight", "attn.in_proj_weight", "attn.out_proj.weight"]
    for name, rows, cols in (("conv1.weight", 16, 27), ("conv2.weight", 64, 16), ("attn.out_proj.weight", 64, 64)):
        s = singular_values(net.get_parameter(name))
        gain = 1.0 if scale == "orthogonal" else math.sqrt(2 * rows / min(rows, cols))
        assert len(s) == min(rows, cols)
        torch.testing.assert_close(s, torch.full_like(s, gain), atol=1e-5, rtol=1e-5)
    for block in net.attn.in_proj_weight.chunk(3):  # q, k and v each orthogonal
        s = singular_values(block)
        torch.testing.assert_close(
            s, torch.full_like(s, 1.0 if scale == "orthogonal" else math.sqrt(2)), atol=1e-5, rtol=1e-5
        )


def test_orthogonalisation_keeps_the_weights_directions():
    # The QR factor spans the same column space as the weight (tall case): projecting the weight on it changes nothing.
    net = make_net()
    before = net.conv2.weight.detach().reshape(64, 16).double().clone()
    ghninit.orthogonalize_(net, noise=0.0, scale="orthogonal")
    q = net.conv2.weight.detach().reshape(64, 16).double()
    torch.testing.assert_close(q @ (q.T @ before), before, atol=1e-5, rtol=1e-5)


def test_noise_is_small_and_only_perturbs():
    exact, noisy = make_net(), make_net()
    ghninit.orthogonalize_(exact, noise=0.0)
    ghninit.orthogonalize_(noisy, noise=3e-5)
    diff = (exact.conv2.weight - noisy.conv2.weight).abs().max().item()
    assert 0 < diff < 1e-3
    s = singular_values(noisy.conv2.weight)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-5, rtol=1e-5)  # still orthogonal


def test_classifier_biases_and_norm_layers_are_left_alone():
    net = make_net()
    before = snapshot(net)
    ghninit.orthogonalize_(net)  # the report's recipe: the defaults
    after = snapshot(net)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"conv1.weight", "conv2.weight", "attn.in_proj_weight", "attn.out_proj.weight"}


def test_classifier_scale_he_rescales_it_without_turning_it():
    net = make_net()
    before = net.fc.weight.detach().clone()
    new = plan(net, Orthogonalize(classifier_scale="he"))  # and it alone changes with this setting
    assert "fc.weight" in new
    assert new["fc.weight"].norm().item() == pytest.approx(math.sqrt(2 * 10), rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(new["fc.weight"].flatten(), before.flatten(), dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    assert "fc.weight" not in plan(net, Orthogonalize(classifier_scale=None))


def test_from_layer_skips_the_layers_before_it():
    net = make_net()
    before = snapshot(net)
    changed = ghninit.orthogonalize_(net, from_layer=3)  # layers: conv1 1, conv2 2, in_proj 3, out_proj 4, fc 5
    assert changed == ["attn.in_proj_weight", "attn.out_proj.weight"]
    assert torch.equal(net.conv1.weight, before["conv1.weight"]) and torch.equal(
        net.conv2.weight, before["conv2.weight"]
    )


def test_deterministic_under_a_seed():
    a, b, c = make_net(), make_net(), make_net()
    ghninit.orthogonalize_(a, noise=1e-2, seed=3)
    ghninit.orthogonalize_(b, noise=1e-2, seed=3)
    ghninit.orthogonalize_(c, noise=1e-2, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(snapshot(a).values(), snapshot(b).values()))
    assert not torch.equal(a.conv2.weight, c.conv2.weight)


def test_a_failing_call_leaves_the_model_untouched():
    net = make_net()
    with torch.no_grad():
        net.attn.out_proj.weight[0, 0] = float("nan")  # a later layer: earlier ones would be computed first
    before = snapshot(net)
    with pytest.raises(ValueError, match="attn.out_proj.weight"):
        ghninit.orthogonalize_(net)
    after = snapshot(net)
    assert all(torch.equal(before[k], after[k]) or k == "attn.out_proj.weight" for k in before)
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_bad_settings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="scale"):
        Orthogonalize(scale="huge")
    with pytest.raises(ValueError, match="noise"):
        Orthogonalize(noise=-1.0)
    with pytest.raises(ValueError, match="postprocess='nope'"):
        resolve_postprocess("nope")
    with pytest.raises(ValueError, match="no conv/linear"):
        ghninit.orthogonalize_(nn.Sequential(nn.ReLU()))


def test_presets():
    assert resolve_postprocess(None) is None and resolve_postprocess(False) is None
    assert resolve_postprocess(True) == Orthogonalize() == resolve_postprocess("orth")  # the report's recipe
    reference = Orthogonalize()
    assert (reference.scale, reference.noise, reference.classifier_scale) == ("orthogonal", 3e-5, None)
    assert resolve_postprocess("orth-he") == Orthogonalize(scale="he", classifier_scale="he")


def test_initialize_postprocess_reports_and_is_all_or_nothing():
    import torchvision

    ghn = ghninit.load_ghn(LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors")
    model = torchvision.models.resnet18(num_classes=10)
    report = ghninit.initialize(model, ghn=ghn, postprocess="orth")
    assert report.postprocess.startswith("orthogonalize(") and "scale=orthogonal" in report.postprocess
    assert "fc.weight" not in report.postprocessed and "conv1.weight" in report.postprocessed
    assert "post-processed" in str(report)
    s = singular_values(model.layer1[0].conv1.weight)  # 64 x 576: orthonormal rows
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-4, rtol=1e-4)
    plain = torchvision.models.resnet18(num_classes=10)
    assert ghninit.initialize(plain, ghn=ghn).postprocessed == []

    fresh = torchvision.models.resnet18(num_classes=10)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match="postprocess"):
        ghninit.initialize(fresh, ghn=ghn, postprocess="bogus")
    assert all(torch.equal(before[k], v) for k, v in snapshot(fresh).items())


def _reference_transform(weight: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """The definition, slowly: float64 (noise drawn in float32), the full row-correlation matrix, one QR per weight."""
    mat = weight.reshape(weight.shape[0], -1).double()
    tall = mat.T if mat.shape[0] < mat.shape[1] else mat
    corr = torch.corrcoef(tall).flatten()
    spread = corr[torch.isfinite(corr)].std()
    mat = mat + noise * spread * torch.randn(mat.shape, generator=generator, dtype=torch.float32).double()
    wide = mat.shape[0] < mat.shape[1]
    q, r = torch.linalg.qr(mat.T if wide else mat)
    q = q * torch.diagonal(r).sign()
    return (q.T if wide else q).reshape(weight.shape)


@pytest.mark.parametrize("noise", [3e-5, 0.05])
def test_fast_path_matches_the_definition(noise):
    """Closed-form correlation spread, float32 QR batched by shape (float64 when ill-conditioned): within 1e-4."""
    torch.manual_seed(0)
    low_rank = torch.randn(32, 2) @ torch.randn(2, 72)  # rank 2: a tiled prediction's kind of weight
    weights = {"a": torch.randn(16, 3, 3, 3), "b": torch.randn(16, 3, 3, 3), "c": torch.randn(64, 16, 1, 1),
               "d": low_rank.reshape(32, 8, 3, 3), "e": torch.randn(10, 64)}
    model = nn.Module()
    for name, w in weights.items():
        setattr(model, name, nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:]) if w.ndim == 4 else nn.Linear(64, 10))
        getattr(model, name).weight.data.copy_(w)
    config = Orthogonalize(noise=noise)
    got = plan(model, config, classifier=["e.weight"])
    generator = torch.Generator().manual_seed(config.seed)
    for name in "abcd":
        expected = _reference_transform(weights[name], noise, generator).float()
        assert (got[f"{name}.weight"] - expected).abs().max().item() < 1e-4, name
    constant_rows = torch.randn(8, 27)
    constant_rows[3] = 1.0
    from ghninit.write.postprocess import _correlation_spread
    corr = torch.corrcoef(constant_rows.T.double()).flatten()
    assert _correlation_spread(constant_rows.double()).item() == pytest.approx(corr[torch.isfinite(corr)].std().item(), rel=1e-9)


def test_postprocessing_time_is_its_own_stage_not_part_of_write(monkeypatch):
    import time

    import ghninit.initializer as initializer

    def slow_plan(*args, **kwargs):
        time.sleep(0.3)
        return plan(*args, **kwargs)

    monkeypatch.setattr(initializer, "plan", slow_plan)
    ghn = ghninit.load_ghn(LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors")
    report = ghninit.initialize(make_net(), ghn=ghn, postprocess="orth")
    seconds = report.seconds
    assert list(seconds) == ["graph", "predict", "postprocess", "write", "total"]
    assert seconds["postprocess"] >= 0.3 and seconds["write"] < seconds["postprocess"] - 0.25
    assert math.isclose(sum(v for k, v in seconds.items() if k != "total"), seconds["total"], rel_tol=1e-9)
    lines = str(report).splitlines()
    assert any(line.strip().startswith(f"post-processing: {seconds['postprocess']:.3f}s") for line in lines)
    time_line = next(line for line in lines if line.strip().startswith("time:"))
    assert "postprocess" not in time_line and f"write {seconds['write']:.3f}s" in time_line
    plain = ghninit.initialize(make_net(), ghn=ghn)
    assert "postprocess" not in plain.seconds and "post-processing:" not in str(plain)
