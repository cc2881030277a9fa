"""The GHN shipped in the package (``cifar10-mini``): offline loading, integrity, and that it is trained."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_DIR, SHARED_DIR, requires_shared

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
from eval_ghn import accuracy  # noqa: E402
from finetune.init import he_init_  # noqa: E402

import ghninit  # noqa: E402
from ghninit import deepnets  # noqa: E402
from ghninit.zoo.hub import SHIPPED_GHNS, GHNLoadError, file_sha256, shipped_card, shipped_path  # noqa: E402


def test_cifar10_mini_is_shipped_with_a_matching_card():
    assert "cifar10-mini" in SHIPPED_GHNS
    path = shipped_path("cifar10-mini")
    card = shipped_card("cifar10-mini")
    assert path.is_file() and path.stat().st_size < 8e6
    assert card["sha256"] == file_sha256(path)
    ghn = ghninit.load_ghn("cifar10-mini")
    # the published CIFAR-10 GHN-2 architecture, so it is interchangeable with the official weights
    assert ghn.config == card["config"] == ghninit.GHN2(max_shape=(64, 64, 11, 11), num_classes=10).config
    assert card["trained"]["cpu_minutes"] <= 155


def test_loads_and_initialises_with_no_network(tmp_path):
    # A dead endpoint and offline mode: any request would fail, so success means none was made.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    code = (
        "import ghninit, torchvision\n"
        "from ghninit.adapt import adapt_to_cifar\n"
        "m = adapt_to_cifar(torchvision.models.resnet18(num_classes=10))\n"
        "r = ghninit.initialize(m, dataset='cifar10-mini')\n"
        "print(r.n_params_predicted == r.n_params_total, r.classifier_predicted)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"]


def test_corrupt_shipped_file_is_an_error(tmp_path, monkeypatch):
    broken = tmp_path / "cifar10-mini.safetensors"
    shutil.copyfile(shipped_path("cifar10-mini"), broken)
    shutil.copyfile(shipped_path("cifar10-mini").with_suffix(".json"), broken.with_suffix(".json"))
    data = bytearray(broken.read_bytes())
    data[-100] ^= 0xFF
    broken.write_bytes(bytes(data))
    monkeypatch.setattr(ghninit.zoo.hub, "shipped_path", lambda name: broken)
    with pytest.raises(GHNLoadError, match="corrupt.*reinstall"):
        ghninit.load_ghn("cifar10-mini")
    broken.unlink()
    with pytest.raises(GHNLoadError, match="missing"):
        ghninit.load_ghn("cifar10-mini")
    with pytest.raises(GHNLoadError, match="shipped"):
        ghninit.load_ghn("cifar10-mini", revision="main")
    with pytest.raises(GHNLoadError, match="needs no download"):
        ghninit.zoo.hub.download_ghn("cifar10-mini")


def _ship_script():
    spec = importlib.util.spec_from_file_location("_ship_weights", REPO_DIR / "hub" / "ship_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ship_script_copies_the_final_ghn_and_writes_its_card(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    ghn = ghninit.GHN2(max_shape=(64, 64, 11, 11), num_classes=10)
    from safetensors.torch import save_file

    save_file(ghn.state_dict(), str(run / "final" / "ghn.safetensors"), metadata={"config": json.dumps(ghn.config)})
    (run / "train_config.json").write_text(json.dumps({"epochs": 1.5}))
    (run / "log.csv").write_text(
        "step,epoch,lr,loss,top1,cpu_minutes\n0,0.0,1e-3,2.5,10.0,1.0\n1,0.1,1e-3,2.1,20.0,2.0\n"
    )
    card_path = _ship_script().ship(run, "cifar10-mini", command="train", out_dir=tmp_path / "weights")
    card = json.loads(card_path.read_text())
    shipped = tmp_path / "weights" / "cifar10-mini.safetensors"
    assert card["sha256"] == file_sha256(shipped) == file_sha256(run / "final" / "ghn.safetensors")
    assert card["trained"]["steps"] == 2 and card["trained"]["cpu_minutes"] == 2.0
    assert card["trained"]["batch_loss_last_2"] == 2.3
    with pytest.raises(SystemExit, match="SHIPPED_GHNS"):
        _ship_script().ship(run, "not-listed", out_dir=tmp_path / "weights")


@requires_shared
def test_shipped_ghn_beats_he_init_on_unseen_architectures():
    """Predicted parameters, no training, on held-out TEST-split networks: well above chance and He init."""
    from ghninit.training.data import load_cifar10

    test = load_cifar10(SHARED_DIR / "data" / "cifar10-jpeg", False).subset(512)
    ghn = ghninit.load_ghn("cifar10-mini")
    ghn_top1, he_top1 = [], []
    for index in (5, 7, 13, 16):  # small networks, a few seconds each
        spec = deepnets.generate("test", index)
        net = spec.build(10, 32, norm=True)
        ghninit.initialize(net, ghn=ghn)
        ghn_top1.append(accuracy(net, test, 64, batch_stats=True))  # as the paper: BN on each batch
        torch.manual_seed(0)
        net = spec.build(10, 32, norm=True)
        he_init_(net)
        he_top1.append(accuracy(net, test, 64, batch_stats=True))
    ghn_mean, he_mean = sum(ghn_top1) / 4, sum(he_top1) / 4
    assert ghn_mean > 14.0 and ghn_mean > he_mean + 3.0, (ghn_top1, he_top1)
