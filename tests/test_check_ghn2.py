"""``python -m ghninit check ghn2-...``: the reference's example networks and evaluation protocol.

The real GHN-2 weights cannot be downloaded here, so the protocol runs with the shipped
cifar10-mini (results printed, not compared) on a few images; the verdict logic is tested apart.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import SHARED_DIR

from ghninit.__main__ import main
from ghninit.training.reference_check import (
    PUBLISHED,
    ExampleResult,
    batchnorm_batch_statistics,
    build_network,
    check_ghn2,
    evaluate,
    imagenet_batches,
)

CIFAR = SHARED_DIR / "data" / "cifar10-jpeg"
requires_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"{CIFAR} not found (../shared absent)")


def test_published_figures_and_tolerances():
    assert PUBLISHED["ghn2-cifar10"]["results"] == {"cnn": 16.84, "darts": 24.24, "resnet50": 58.62, "vit": 11.41}
    assert PUBLISHED["ghn2-imagenet"]["results"] == {"darts": 12.82, "resnet50": 5.27, "vit": 4.41}
    cifar = lambda v: ExampleResult("cnn", "top1", v, 10000, 16.84, 0.005, 0.0, 1.0).passed  # noqa: E731
    assert cifar(16.84) and cifar(1684 / 100) and not cifar(16.85) and not cifar(16.83)  # one image is 0.01
    imagenet = lambda v: ExampleResult("vit", "top5", v, 50000, 4.41, 0.01, 0.0, 1.0).passed  # noqa: E731
    assert imagenet(4.42) and imagenet(4.40) and not imagenet(4.43)
    assert ExampleResult("vit", "top1", 9.0, 64, None, 0.005, 0.0, 1.0).passed is None


def test_example_networks_are_configured_as_the_reference_examples():
    cnn = build_network("cnn", imagenet=False)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)] and [c.out_channels for c in convs] == [
        64,
        128,
        256,
    ]
    r50 = build_network("resnet50", imagenet=False)  # the reference's adjust_net for 32x32 images
    assert r50.conv1.kernel_size == (3, 3) and r50.conv1.stride == (1, 1) and isinstance(r50.maxpool, nn.Identity)
    assert build_network("resnet50", imagenet=True).fc.out_features == 1000
    vit = build_network("vit", imagenet=False)
    assert vit.stem.kernel_size == (3, 3) and len(vit.cells) == 12 and not vit.training
    for name in ("cnn", "vit"):
        assert build_network(name, imagenet=False)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(KeyError, match="cnn, darts, resnet50, vit"):
        build_network("vgg", imagenet=False)


def test_batchnorm_uses_each_batch_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(5.0)
    batchnorm_batch_statistics(model)
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        expected = F.batch_norm(model[0](x), None, None, model[1].weight, model[1].bias, training=True)
        assert torch.allclose(model(x), expected, atol=1e-6)
    assert model[1].running_mean.eq(5.0).all()  # not updated


def test_evaluate_counts_top1_and_top5():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0], [0.0, 9, 1, 2, 3, 4, 5]])
    model = nn.Linear(7, 7, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(7))
    scores = evaluate(model, [(logits, torch.tensor([0, 0]))])
    assert scores == {"top1": 50.0, "top5": 50.0, "images": 2}  # second row: class 0 has the lowest score


@requires_cifar
def test_protocol_runs_with_the_shipped_ghn_without_verdicts():
    lines = []
    results = check_ghn2(
        "ghn2-cifar10", CIFAR, ghn="cifar10-mini", compare=False, networks=["cnn", "vit"], limit=48, log=lines.append
    )
    assert [r.network for r in results] == ["cnn", "vit"]
    assert all(
        r.images == 48 and r.published is None and r.passed is None and r.predicted_fraction == 1 for r in results
    )
    assert all(
        0 <= r.value <= 100 and (r.value * 48 / 100) == pytest.approx(round(r.value * 48 / 100)) for r in results
    )
    assert "ImageFolder copy" in lines[0] and lines[1].startswith("-     cnn")


@requires_cifar
def test_check_command_prints_results_and_refuses_bad_use(capsys):
    assert (
        main(
            [
                "check",
                "ghn2-cifar10",
                "--data-dir",
                str(CIFAR),
                "--ghn",
                "cifar10-mini",
                "--networks",
                "cnn",
                "--limit",
                "16",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "not compared" in out and "cnn       top1" in out and "PASS" not in out
    assert main(["check", "ghn2-cifar10"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["check", "ghn2-cifar10", "--data-dir", str(CIFAR), "--networks", "vgg", "--ghn", "cifar10-mini"]) == 2
    assert main(["check", "ghn3-t"]) == 2  # the GHN-3 check still needs a model
    assert "needs a MODEL" in capsys.readouterr().err


def test_imagenet_loader_reads_a_class_folder_tree_in_a_seeded_shuffle(tmp_path):
    from PIL import Image

    for c, wnid in enumerate(("n01440764", "n01443537")):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (300, 260), (40 * c + 10 * i, 20, 30)).save(tmp_path / "val" / wnid / f"{i}.png")
    batches = list(imagenet_batches(tmp_path, limit=5, workers=0))
    images, labels = batches[0]
    assert images.shape == (5, 3, 224, 224) and sorted(labels.tolist()) in ([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    again = list(imagenet_batches(tmp_path, limit=5, workers=0))
    assert torch.equal(again[0][1], labels)  # the order is fixed by the seed
    results = check_ghn2(
        "ghn2-imagenet", tmp_path, ghn="cifar10-mini", compare=False, networks=["cnn"], workers=0, log=lambda s: None
    )
    assert results[0].metric == "top5" and results[0].images == 6 and results[0].published is None
