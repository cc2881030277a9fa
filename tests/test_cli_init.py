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
    report = json.loads(out.with_name("cnn.pt.json").read_text())["report"]
    assert report["postprocessed"] and set(report["seconds"]) == {"graph", "predict", "postprocess", "write", "total"}
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


class FixedSizeNet(torch.nn.Module):
    """A CNN whose classifier fixes the input at 16 x 16 and whose forward branches on its input (no symbolic trace)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 16 * 16, num_classes)

    def forward(self, x):
        if x.dim() == 3:  # fx cannot trace a branch on a proxy
            x = x.unsqueeze(0)
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_img_size_for_a_cnn_and_a_vit(tmp_path, capsys):
    import timm
    from timm.models import load_checkpoint

    out = tmp_path / "r18.safetensors"
    assert main(["init", "resnet18", "--num-classes", "10", "--img-size", "32", "-o", str(out)]) == 0
    assert "takes no image size" in capsys.readouterr().err
    summary = json.loads(out.with_name("r18.safetensors.json").read_text())
    assert summary["input_size"] == [3, 32, 32] and summary["input_size_keyword"] is None
    assert "img_size" not in summary["model_kwargs"]
    load_checkpoint(timm.create_model("resnet18", num_classes=10), str(out))

    out = tmp_path / "vit.safetensors"
    args = ["init", "vit_tiny_patch16_224", "--num-classes", "10", "--img-size", "32", "-o", str(out)]
    assert main(args) == 0
    assert "passed to the constructor as img_size=32" in capsys.readouterr().err
    summary = json.loads(out.with_name("vit.safetensors.json").read_text())
    assert summary["input_size_keyword"] == "img_size" and summary["model_kwargs"]["img_size"] == 32
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    load_checkpoint(model, str(out))  # the 32 x 32 position embedding: (1, 1 + 2 * 2, 192)
    assert model.pos_embed.shape == (1, 5, 192)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_input_size_sets_channels_and_the_example_input_of_timm_models():
    import argparse

    from ghninit.cli.models import add_model_arguments, build_model, spec_from_args
    from ghninit.graph.example_inputs import infer_example_inputs

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    spec = spec_from_args(parser.parse_args(["vit_tiny_patch16_224", "--input-size", "1", "48", "32"]))
    assert spec.kwargs == {"in_chans": 1, "img_size": (48, 32)} and spec.input_size == (1, 48, 32)
    model = build_model(spec, meta=True)
    assert model.patch_embed.proj.in_channels == 1
    (image,) = infer_example_inputs(model)  # what a model is traced on when symbolic tracing fails
    assert image.shape == (1, 1, 48, 32)
    spec = spec_from_args(parser.parse_args(["torchvision:vit_b_16", "--img-size", "64"]))
    assert spec.size_keyword == "image_size" and spec.kwargs == {"image_size": 64}
    spec = spec_from_args(parser.parse_args(["test_cli_init:FixedSizeNet", "--img-size", "16"]))
    assert spec.size_keyword is None and spec.input_size == (3, 16, 16)
    with pytest.raises(ValueError, match="contradicts"):
        spec_from_args(parser.parse_args(["resnet18", "--in-chans", "3", "--input-size", "1", "32", "32"]))
    with pytest.raises(ValueError, match="contradicts"):
        spec_from_args(parser.parse_args(["vit_tiny_patch16_224", "--img-size", "32", "--model-kwargs", "img_size=64"]))
    with pytest.raises(ValueError, match="timm models"):
        spec_from_args(parser.parse_args(["torchvision:resnet18", "--input-size", "1", "32", "32"]))
    with pytest.raises(SystemExit):  # one of the two, as train.py's
        parser.parse_args(["resnet18", "--img-size", "32", "--input-size", "3", "32", "32"])


def test_img_size_is_the_example_input_of_a_model_that_only_traces_on_one(tmp_path, capsys):
    out = tmp_path / "net.pt"
    args = ["init", "test_cli_init:FixedSizeNet", "-o", str(out)]
    assert main(args) == 1  # inferred 224 x 224 example input: the classifier does not fit
    err = capsys.readouterr().err
    assert "with an example input failed" in err and "--img-size" in err
    assert main([*args, "--img-size", "16"]) == 0
    summary = json.loads(out.with_name("net.pt.json").read_text())
    assert summary["input_size"] == [3, 16, 16] and summary["report"]["tracing"] == "example input"
    assert "fc.weight" in summary["report"]["predicted"]
    FixedSizeNet().load_state_dict(torch.load(out, weights_only=True))


_MAIN_WITHOUT_TORCH = """
import sys, runpy
sys.argv = ["python -m ghninit", *sys.argv[1:]]
try:
    runpy.run_module("ghninit", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    print("exit", exit.code, "torch" in sys.modules, "timm" in sys.modules)
"""


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["--help"], 0),
        (["init", "--help"], 0),
        (["init", "resnet18"], 2),
        (["init", "x", "-o", "y", "--img-size", "a"], 2),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(argv, status):
    out = subprocess.run(
        [sys.executable, "-c", _MAIN_WITHOUT_TORCH, *argv], capture_output=True, text=True, cwd=REPO_DIR, timeout=60
    )
    assert out.stdout.splitlines()[-1] == f"exit {status} False False", out.stdout + out.stderr
    if status == 2:
        assert "error:" in out.stderr


def test_package_names_are_imported_on_first_use():
    code = "import sys, ghninit; print('torch' in sys.modules, ghninit.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_DIR, timeout=60)
    assert out.stdout.split() == ["False", ghninit.__version__], out.stderr
    from ghninit import TraceError, initialize

    assert sorted(ghninit.__all__) == sorted(ghninit._EXPORTS) and "initialize" in dir(ghninit)
    for name in ghninit.__all__:
        assert getattr(ghninit, name).__name__ == name
    assert initialize is ghninit.initialize and TraceError is ghninit.errors.TraceError
    assert ghninit.graph.build.Graph is ghninit.Graph  # subpackages as attributes, as before
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        ghninit.no_such_name  # noqa: B018
