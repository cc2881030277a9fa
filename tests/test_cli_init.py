"""``python -m ghninit init``: the written file loads into the model timm/torchvision build, with the predicted tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_DIR

import ghninit
from ghninit.__main__ import main
from ghninit.cli.init import write_outputs


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


def _predicted_elsewhere(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    report = ghninit.initialize(model, ghn="cifar10-mini")
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in report.predicted}, report.predicted


def test_timm_file_loads_with_load_checkpoint_and_holds_the_predictions(tmp_path, capsys):
    import timm
    from timm.models import load_checkpoint

    out = tmp_path / "net.safetensors"
    assert main(["init", "test_resnet", "-o", str(out), "--num-classes", "10", "--ghn", "cifar10-mini"]) == 0
    err = capsys.readouterr().err
    assert "initialised by cifar10-mini" in err and f"wrote {out}" in err
    summary = json.loads((tmp_path / "net.safetensors.json").read_text())
    assert summary["built_on"] == "meta" and summary["model_kwargs"] == {"num_classes": 10}
    import hashlib

    assert summary["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()

    model = timm.create_model("test_resnet", num_classes=10)
    load_checkpoint(model, str(out))  # what train.py --initial-checkpoint does (strict)
    saved = _tensors(out)
    assert set(saved) == set(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    expected, predicted = _predicted_elsewhere(timm.create_model("test_resnet", num_classes=10))
    assert predicted == summary["report"]["predicted"] and len(predicted) > 10
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name  # exactly the predicted tensors
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_torchvision_pth_loads_with_load_state_dict(tmp_path):
    import torchvision

    out = tmp_path / "mnv3.pth"
    args = ["init", "torchvision:mobilenet_v3_small", "-o", str(out), "--num-classes", "10"]
    assert main(args) == 0
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    state = torch.load(out, weights_only=True)
    model.load_state_dict(state)  # strict: every key, right shapes
    report = json.loads(out.with_name("mnv3.pth.json").read_text())["report"]
    fresh = torchvision.models.mobilenet_v3_small(num_classes=10)
    ghninit.initialize(fresh, ghn="cifar10-mini")
    fresh_params = dict(fresh.named_parameters())
    for name in report["predicted"]:
        assert torch.equal(state[name], fresh_params[name].detach()), name


def test_callable_model_and_model_kwargs(tmp_path):
    out = tmp_path / "cnn.pt"
    args = [
        "init",
        "ghninit.training.reference_check:ExampleCNN",
        "-o",
        str(out),
        "--model-kwargs",
        "channels=8",
        "num_classes=3",
    ]
    assert main([*args, "--postprocess", "orth"]) == 0
    assert json.loads(out.with_name("cnn.pt.json").read_text())["report"]["postprocessed"]
    from ghninit.training.reference_check import ExampleCNN

    ExampleCNN(num_classes=3, channels=8).load_state_dict(torch.load(out, weights_only=True))


def test_bad_name_lists_close_matches(tmp_path, capsys):
    assert main(["init", "resnet5O", "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "unknown timm model 'resnet5O'" in err and "resnet50" in err
    assert main(["init", "torchvision:resnet5", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "resnet50" in capsys.readouterr().err
    assert main(["init", "no_such_module_xyz:build", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_existing_file_and_bad_extension_are_refused(tmp_path, capsys):
    assert main(["init", "test_resnet", "-o", str(tmp_path / "missing" / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "missing").exists()
    existing = tmp_path / "x.safetensors"
    existing.write_bytes(b"keep me")
    assert main(["init", "test_resnet", "-o", str(existing)]) == 2
    assert "--force" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert main(["init", "test_resnet", "-o", str(tmp_path / "x.ckpt")]) == 2
    assert "unknown extension" in capsys.readouterr().err
    assert main(["init", "test_resnet", "-o", str(existing), "--force"]) == 0
    assert existing.read_bytes() != b"keep me"


def test_a_failed_write_leaves_nothing(tmp_path):
    out, report = tmp_path / "x.safetensors", tmp_path / "x.safetensors.json"

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_outputs(out, report, fail, {})
    assert list(tmp_path.iterdir()) == []


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "ghninit", "--help"], capture_output=True, text=True, cwd=REPO_DIR)
    assert out.returncode == 0
    for command in ("list", "download", "init", "graph", "check"):
        assert f"    {command} " in out.stdout, out.stdout
