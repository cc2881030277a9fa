"""The recipes benchmark: schedules, starts, resumed runs equal uninterrupted ones, the report; and the advice line."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn as nn
from conftest import REPO_DIR

import ghninit
from ghninit.report import start_advice
from ghninit.training.data import ImageTensors

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
import first_steps  # noqa: E402
import recipes  # noqa: E402
from finetune import recipes as recipe_lib  # noqa: E402
from finetune import starts  # noqa: E402


def _fake_cifar(n: int, seed: int) -> ImageTensors:
    g = torch.Generator().manual_seed(seed)
    return ImageTensors(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g))


def test_warmup_then_cosine_schedule():
    model = nn.Linear(4, 2)
    opt, sched = recipe_lib.make_optimizer(model, recipe_lib.RECIPES["sgd-0.1-w1"], steps_per_epoch=10, epochs=3)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warmup over one epoch
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then decays
    assert lrs[-1] < 0.002
    assert opt.param_groups[1]["weight_decay"] == 0.0  # no decay on biases
    opt, _ = recipe_lib.make_optimizer(model, recipe_lib.RECIPES["sgd-0.05"], steps_per_epoch=10, epochs=3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # no warmup: the peak from the first step


def test_starts_differ_only_in_parameters_and_unknown_ones_are_refused():
    ghn = ghninit.load_ghn("cifar10-mini")
    default, _ = starts.make_start("resnet18", "default", ghn)
    model, info = starts.make_start("resnet18", "ghn+orth", ghn)
    assert info["predicted_fraction"] == 1.0 and info["postprocess"].startswith("orth")
    assert not torch.equal(default.conv1.weight, model.conv1.weight)
    with pytest.raises(ValueError, match="unknown start"):
        starts.apply_start(model, "lsuv", ghn)


def test_a_resumed_run_ends_with_the_same_numbers(tmp_path):
    train, test = _fake_cifar(64, 0), _fake_cifar(40, 1)
    spec = recipe_lib.RunSpec("vit", "sgd-0.05-w1", "ghn", 0, epochs=2, train_images=64, test_images=40, batch_size=32)
    ghn = ghninit.load_ghn("cifar10-mini")
    whole = recipe_lib.train_run(spec, train, test, ghn, tmp_path / "a.pt", log=lambda m: None)
    one = recipe_lib.RunSpec(**{**spec.__dict__, "epochs": 1})
    recipe_lib.train_run(one, train, test, ghn, tmp_path / "b.pt", log=lambda m: None)
    resumed = recipe_lib.train_run(spec, train, test, ghn, tmp_path / "b.pt", log=lambda m: None)
    assert len(whole["test_top1"]) == 3  # before training and after each epoch
    assert resumed["test_top1"] == whole["test_top1"]
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)


def test_report_table_has_mean_and_std_over_seeds(tmp_path):
    def record(start, seed, top1):
        spec = recipe_lib.RunSpec("resnet18", "adamw-w1", start, seed, epochs=2)
        return {"config": spec.config(), "test_top1": top1, "max_loss": 2.5, "diverged": False}

    records = [record("default", 0, [10, 20, 30]), record("default", 1, [10, 22, 34]), record("ghn", 0, [10, 40, 50])]
    text = recipes.report_markdown(records)
    assert "| resnet18 | adamw-w1 | default | 2 | 21.0 ± 1.4 | 32.0 ± 2.8 | 2.5 ± 0.0 |" in text
    assert "| resnet18 | adamw-w1 | ghn | 1 | 40.0 | 50.0 | 2.5 |" in text
    records.append(record("ghn+orth", 0, [10, 21, 31]))
    summary = recipes.summary_markdown(records)
    assert "| resnet18 | adamw-w1 | 1 | 32.0 ± 2.8 | 50.0 | 31.0 | no: behind at epoch 2 |" in summary
    recipes.plot(records, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_first_steps_attribution_start_resets_only_its_group():
    ghn = ghninit.load_ghn("cifar10-mini")
    plain, _ = starts.make_start("resnet18", "ghn", ghn)
    reset, _ = starts.make_start("resnet18", "ghn[classifier=default]", ghn)
    default, _ = starts.make_start("resnet18", "default", ghn)
    assert torch.equal(reset.fc.weight, default.fc.weight)
    assert torch.equal(reset.conv1.weight, plain.conv1.weight)
    rows = first_steps.first_steps(reset, [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))] * 2, "sgd-0.05")
    assert len(rows) == 2 and rows[0]["classifier"]["relative_update"] > 0
    x = torch.randn(16, 3, 32, 32)
    calibrated, _ = starts.make_start("vit", "ghn[output-std=default]", ghn, batch=x)
    vit_default, _ = starts.make_start("vit", "default", ghn)
    head = starts.classifier_of
    with torch.no_grad():
        assert head(calibrated)(torch.ones(1, 192)).shape == (1, 10)
        assert calibrated(x).std().item() == pytest.approx(vit_default(x).std().item(), rel=1e-3)


def test_advice_names_warmup_and_orth_and_is_logged_once(caplog):
    assert start_advice(0, None) is None
    assert "warmup" in start_advice(10, None) and 'postprocess="orth"' in start_advice(10, None)
    assert 'postprocess="orth"' not in start_advice(10, "orth: ...")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    ghninit.initializer._ADVISED.clear()
    with caplog.at_level(logging.WARNING, logger="ghninit"):
        first = ghninit.initialize(model, dataset="cifar10-mini")
        ghninit.initialize(model, dataset="cifar10-mini")
    assert first.advice and "warmup" in str(first)
    assert [r.getMessage() for r in caplog.records].count(f"ghninit: {first.advice}") == 1
