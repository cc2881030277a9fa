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


# -- what users really pass: wrong types, wrappers, tied weights, meta-device models -------------


def test_not_a_module_is_a_type_error(ghn):
    with pytest.raises(TypeError, match="expected an nn.Module, got str"):
        ghninit.initialize("resnet", ghn=ghn)


def test_dataset_and_ghn_together_is_an_error(ghn):
    with pytest.raises(ValueError, match="give one of them"):
        ghninit.initialize(small_resnet(), dataset="cifar10-mini", ghn=ghn)


class TiedConvs(nn.Module):
    """``c`` is registered before ``b`` but used after it, and shares ``b``'s weight (not its bias)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.c.weight = self.b.weight
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.c(self.b(self.a(x)).relu()).relu()
        return self.fc(x.mean((2, 3)))


def test_tied_weights_are_predicted_once_at_their_first_use(ghn):
    model = TiedConvs()
    before = snapshot(model)
    report = ghninit.initialize(model, ghn=ghn)
    # first use in graph order is b (registration order would say c)
    assert "b.weight" in report.predicted and "c.weight" not in report.predicted
    assert report.shared == {"b.weight": ["c.weight"]}
    assert "tied: b.weight predicted once, shared with c.weight" in str(report)
    assert model.c.weight is model.b.weight
    assert not torch.equal(model.b.weight, before["c.weight"])
    assert {"b.bias", "c.bias"} <= set(report.predicted)  # the untied biases are their own nodes
    assert report.fraction_predicted == 1.0 and not report.skipped
    assert report.n_params_total == sum(p.numel() for p in model.parameters())


def test_a_layer_called_twice_is_one_node(ghn):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    report = ghninit.initialize(Twice(), ghn=ghn)
    assert report.n_tensors_predicted == 6 and not report.shared


def _wrapped_matches_plain(ghn, wrap):
    plain, inner = small_resnet(), small_resnet()
    ghninit.initialize(plain, ghn=ghn)
    report = ghninit.initialize(wrap(inner), ghn=ghn)
    assert report.model == "ResNet" and report.n_tensors_predicted == 62
    assert not any(name.startswith(("module.", "_orig_mod.")) for name in report.predicted)
    for (name, p), q in zip(inner.named_parameters(), plain.parameters()):
        p = p.full_tensor() if hasattr(p, "full_tensor") else p  # a DTensor (fully_shard)
        assert torch.equal(p, q), name
    return report


def test_compiled_model_initialises_the_module_inside(ghn):
    report = _wrapped_matches_plain(ghn, torch.compile)
    assert report.wrappers == ["OptimizedModule"] and "inside OptimizedModule" in str(report)


def test_data_parallel_and_compile_nested(ghn):
    report = _wrapped_matches_plain(ghn, lambda m: nn.DataParallel(torch.compile(m)))
    assert report.wrappers == ["DataParallel", "OptimizedModule"]


@pytest.fixture
def process_group(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_distributed_data_parallel(ghn, process_group):
    report = _wrapped_matches_plain(ghn, nn.parallel.DistributedDataParallel)
    assert report.wrappers == ["DistributedDataParallel"]


def test_fsdp1_is_refused_with_advice_that_works_for_it(ghn, process_group):
    from torch.distributed.fsdp import FullyShardedDataParallel

    with pytest.warns(UserWarning, match="NO_SHARD"):  # world size 1
        fsdp1 = FullyShardedDataParallel(small_resnet(), device_id=torch.device("cpu"))
    for model in (fsdp1, nn.DataParallel(fsdp1)):
        with pytest.raises(ghninit.ShardedModelError, match=r"'<root>' is FullyShardedDataParallel \(FSDP1\)") as err:
            ghninit.initialize(model, ghn=ghn)
        assert "on the plain model before wrapping" in str(err.value) and "fully_shard" in str(err.value)


def test_fsdp2_in_one_process_matches_plain(ghn, process_group):
    """fully_shard over a mesh of one rank: DTensor parameters, written through the sharded path."""
    from torch.distributed.fsdp import fully_shard

    report = _wrapped_matches_plain(ghn, fully_shard)
    assert report.rank == (0, 1) and len(report.sharded) == 62
    assert report.sharded["fc.weight"][:2] == ((10, 512), (10, 512))


def test_sharded_model_still_on_meta_says_to_allocate_it(ghn, process_group):
    from torch.distributed.fsdp import fully_shard

    with torch.device("meta"):
        model = fully_shard(small_resnet())
    with pytest.raises(ValueError, match=r"still on the meta device.*to_empty\(device='cpu'\)"):
        ghninit.initialize(model, ghn=ghn)
    model.to_empty(device="cpu")
    with pytest.raises(ValueError, match="local shards are on cpu"):
        ghninit.initialize(model, ghn=ghn, device="meta")


def test_meta_model_without_device_is_an_error_not_a_success(ghn):
    with torch.device("meta"):
        model = small_resnet()
    with pytest.raises(ValueError, match="meta device.*device='cpu'"):
        ghninit.initialize(model, ghn=ghn)
    assert all(p.is_meta for p in model.parameters())


def test_meta_model_is_materialised_with_predictions(ghn):
    with torch.device("meta"):
        model = small_resnet()
        model.bn1.running_mean.fill_(3.0)  # no data: must not matter
    report = ghninit.initialize(model, ghn=ghn, device="cpu")
    assert report.materialized_on == "cpu" and "materialised from the meta device on cpu" in str(report)
    assert not any(t.is_meta for t in model.state_dict().values())
    reference = small_resnet()
    ghninit.initialize(reference, ghn=ghn)
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name  # same predictions, and BatchNorm statistics reset
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_meta_model_uncovered_parameters_use_reset_parameters_or_a_reported_fallback(ghn):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn, self.fc = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 10)
            self.scale = nn.Parameter(torch.full((8,), 0.5))
            self.extra = nn.Parameter(torch.ones(4, 8))  # not on the path to the output
            self.pos = nn.Parameter(torch.ones(1, 5, 8))  # a position embedding, not on the path either

        def forward(self, x):
            x = self.gn(self.conv(x)) * self.scale.view(1, -1, 1, 1)
            return self.fc(x.mean((2, 3)))

    with torch.device("meta"):
        model = Net()
    report = ghninit.initialize(model, ghn=ghn, device="cpu")
    assert torch.equal(model.gn.weight, torch.ones(8)) and torch.equal(model.gn.bias, torch.zeros(8))
    assert "GroupNorm.reset_parameters()" in report.skipped["gn.weight"]
    assert torch.equal(model.scale, torch.zeros(8)) and "zeros" in report.skipped["scale"]
    assert "kaiming_uniform" in report.skipped["extra"] and model.extra.abs().max() > 0
    assert "trunc_normal" in report.skipped["pos"] and 0.005 < model.pos.std() < 0.05
    assert {"conv.weight", "conv.bias", "fc.weight", "fc.bias"} == set(report.predicted)


def test_meta_model_with_an_unrecoverable_buffer_fails_before_allocating(ghn):
    class WithTable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 10)
            self.register_buffer("table", torch.arange(8.0))

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)) + self.table)

    with torch.device("meta"):
        model = WithTable()
    with pytest.raises(ValueError, match="buffer 'table' of WithTable is computed when the model is built"):
        ghninit.initialize(model, ghn=ghn, device="cpu")
    assert all(t.is_meta for t in model.state_dict().values())


def test_meta_materialisation_rolls_back_on_failure(ghn, monkeypatch):
    import ghninit.write.meta as meta

    with torch.device("meta"):
        model = small_resnet()

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(meta, "write", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ghninit.initialize(model, ghn=ghn, device="cpu")
    assert all(t.is_meta for t in model.state_dict().values())


def test_meta_and_cpu_mix_is_a_clear_error(ghn):
    model = small_resnet()
    with torch.device("meta"):
        model.fc = nn.Linear(512, 10)
    before = {k: v.clone() for k, v in model.state_dict().items() if not v.is_meta}
    for device in (None, "cpu"):
        with pytest.raises(ValueError, match=r"meta device \('fc.weight'\) and on cpu \('conv1.weight'\)"):
            ghninit.initialize(model, ghn=ghn, device=device)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_device_argument_for_a_real_model(ghn):
    ghninit.initialize(small_resnet(), ghn=ghn, device="cpu")  # already there: fine
    with pytest.raises(ValueError, match="device='cuda:0' is for models built on the meta device"):
        ghninit.initialize(small_resnet(), ghn=ghn, device="cuda:0")
