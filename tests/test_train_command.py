"""`python -m ghninit train`: a tiny ImageFolder (7 classes, non-square images) trained, resumed, loaded and used.

Also GHN-3's training path (equal to inference-mode GHN-3 on the same graph) and the GHN-3 paper's
regulariser on predicted parameter norms.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

import ghninit
from ghninit import deepnets
from ghninit.cli import main
from ghninit.training.card import read_card
from ghninit.training.data import load_image_folder
from ghninit.training.trainer import (
    MetaBatchPredictor,
    TrainConfig,
    Trainer,
    make_ghn,
    predicted_norm,
    prepare_architecture,
)

CLASSES = [f"class{c}" for c in range(7)]


def _small_archs(config: TrainConfig, n: int) -> list:
    out, i = [], 0
    while len(out) < n:
        spec = deepnets.generate("train", i)
        i += 1
        if spec.n_cells <= 6 and spec.channels <= 32 and spec.genotype.steps <= 2:
            out.append(prepare_architecture(spec, config))
    return out


def _folder(root, per_class: int = 2, test_per_class: int = 1) -> None:
    """7 classes of non-square images (40 x 28 and 30 x 36 pixels), a little colour signal per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                w, h = (40, 28) if k % 2 == 0 else (30, 36)
                pixels = rng.integers(0, 128, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] += np.uint8(16 * c)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GHNINIT_CACHE", str(tmp_path / "cache"))
    _folder(tmp_path / "mydata")
    return tmp_path / "mydata"


def test_train_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--variant", "--image-size", "--norm-reg", "--max-minutes", "--max-steps", "torchrun"):
        assert option in text


def test_image_folder_size_statistics_and_hash(folder):
    train, test, info = load_image_folder(folder)
    assert info.num_classes == 7 and info.classes == CLASSES
    assert info.image_size == 28  # the (low) median shorter side of 40 x 28 and 30 x 36 images
    assert train.images.shape == (14, 3, 28, 28) and test.images.shape == (7, 3, 28, 28)
    assert load_image_folder(folder, multiple=16)[2].image_size == 32
    pixels = train.images.float().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(info.mean, pixels.mean(1).numpy(), atol=1e-5)
    assert np.allclose(info.std, pixels.std(1).numpy(), atol=1e-5)
    _, _, info20 = load_image_folder(folder, image_size=20)
    assert info20.image_size == 20 and info20.files_sha256 == info.files_sha256
    (folder / "train" / CLASSES[0] / "extra.png").write_bytes((folder / "train" / CLASSES[0] / "0.png").read_bytes())
    assert load_image_folder(folder)[2].files_sha256 != info.files_sha256


@pytest.mark.parametrize("variant", ["ghn2", "ghn3-tiny"])
def test_train_resume_load_and_initialize_resnet18(folder, tmp_path, capsys, variant):
    out = tmp_path / "run"
    args = ["train", "--data", str(folder), "--variant", variant, "--save-dir", str(out), "--quiet", "--procs", "1"]
    args += ["--batch-size", "7", "--meta-batch", "2", "--max-nodes", "300", "--eval-nets", "1", "--threads", "1"]
    assert main([*args, "--max-steps", "1"]) == 0
    assert main([*args, "--max-steps", "2"]) == 0  # resumes at step 1
    text = capsys.readouterr().out
    assert "resumed from" in text and "step 2/2" in text
    final = out / "final"
    ghn = ghninit.load_ghn(final)
    assert type(ghn).__name__ == ("GHN3" if variant.startswith("ghn3") else "GHN2")
    assert ghn.num_classes == 7 and tuple(ghn.max_shape[2:]) == (11, 11)
    card = read_card(final)
    assert card == json.loads((final / "training.json").read_text()) == read_card(final / "ghn.safetensors")
    assert card["variant"] == variant and card["training"]["steps"] == 2
    data = card["data"]
    assert (data["name"], data["num_classes"], data["image_size"], data["train_images"]) == ("mydata", 7, 32, 14)
    assert len(data["files_sha256"]) == 64 and len(data["mean"]) == 3
    assert card["training"]["cpu_minutes_rank0"] > 0 and card["evaluation"]["images"] == 7
    assert card["training"]["norm_reg"] == (3e-5 if variant.startswith("ghn3") else 0.0)
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1"]

    if variant == "ghn2":  # resuming on other files says so
        (folder / "train" / CLASSES[0] / "extra.png").write_bytes(
            (folder / "train" / CLASSES[0] / "0.png").read_bytes()
        )
        assert main([*args, "--max-steps", "2", "--eval-nets", "0"]) == 0
        assert "is not the file list this run started on" in capsys.readouterr().out
    assert ghninit.load_ghn(out).config == ghn.config  # the --save-dir loads its final/ GHN
    model = torchvision.models.resnet18(num_classes=7)
    report = ghninit.initialize(model, ghn=str(out))
    assert report.fraction_predicted == 1.0 and report.classifier_predicted
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_ghn3_training_forward_equals_inference_forward():
    config = TrainConfig(hypernet="graphormer", hid=16, layers=1, heads=4, max_shape=(16, 16, 11, 11), max_nodes=300)
    ghn = make_ghn(config)
    with torch.no_grad():  # make every decoder row matter
        for p in ghn.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    archs = _small_archs(config, 2)
    ghn.train()
    trained = MetaBatchPredictor(ghn)([a.graph for a in archs])
    assert all(t.requires_grad for p in trained for t in p.values())
    ghn.eval()
    with torch.inference_mode():
        inferred = [ghn(a.graph) for a in archs]
    for got, want in zip(trained, inferred):
        assert got.keys() == want.keys() and len(got) > 10
        for name in got:  # equal up to float rounding (the attention kernel differs with autograd on)
            torch.testing.assert_close(got[name].detach(), want[name], rtol=1e-6, atol=1e-7)


def test_norm_regulariser_term_and_gradient():
    base = dict(hypernet="graphormer", hid=16, layers=1, heads=4, max_shape=(16, 16, 11, 11), meta_batch=2)
    base.update(batch_size=4, max_nodes=300, num_classes=10, epochs=1, optimizer="adamw", lr=0.0, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.arange(4)

    def step(weight: float) -> tuple[Trainer, float, dict]:
        trainer = Trainer(TrainConfig(**base, norm_reg=weight), steps_per_epoch=10)
        prepared = trainer.sample_architectures(0)
        with torch.no_grad():
            expected = torch.stack([predicted_norm(trainer.ghn(a.graph)) for a in prepared[1]]).mean()
        result = trainer.train_step(images, labels, prepared)
        grads = {n: p.grad.clone() for n, p in trainer.ghn.named_parameters() if p.grad is not None}
        return result, float(expected), grads

    off, _, grads_off = step(0.0)
    on, norm, grads_on = step(0.5)
    assert off.norm_reg == 0.0
    assert on.norm_reg == pytest.approx(0.5 * norm, rel=1e-5) and norm > 0
    assert on.loss == pytest.approx(off.loss, rel=1e-6)  # the cross-entropy part is the same
    # the gradient of the regulariser pulls the decoder's output layer (before clipping, both are small)
    assert not torch.allclose(grads_on["decoder.conv.2.weight"], grads_off["decoder.conv.2.weight"])
