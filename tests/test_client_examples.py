"""The training clients' examples (examples/lightning_module.py, examples/hf_trainer.py) run, and start once from a GHN.

Skipped when the optional packages are absent (``pip install -e .[clients]``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from conftest import REPO_DIR

import ghninit

EXAMPLES = REPO_DIR / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300, cwd=REPO_DIR
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def count_initialize(monkeypatch) -> list[str]:
    """Every ghninit.initialize call, by model class name."""
    calls: list[str] = []
    original = ghninit.initialize

    def counting(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(ghninit, "initialize", counting)
    return calls


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lightning_example_runs(tmp_path):
    pytest.importorskip("lightning")  # as a script: a file named lightning.py there would shadow the package
    out = run("lightning_module.py", "--max-steps", "2", "--val-batches", "1", "--out-dir", str(tmp_path)).stdout
    assert "ResNet initialised by cifar10-mini" in out and "steps 2," in out, out
    assert "weights after validate are the trained ones: True" in out
    assert (tmp_path / "last.ckpt").is_file()


def test_lightning_initialises_once_and_a_resumed_run_keeps_the_checkpoint(tmp_path, count_initialize):
    L = pytest.importorskip("lightning")
    example = load_example("lightning_module")
    train, val = example.datasets_for(None, 32, 10)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=16)

    def trainer(max_steps: int):
        return L.Trainer(
            max_steps=max_steps,
            limit_val_batches=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            default_root_dir=tmp_path,
        )

    L.seed_everything(0, verbose=False)
    module = example.GHNClassifier("resnet18", 10, "cifar10-mini")
    first = trainer(2)
    first.fit(module, loader, val_loader)
    assert count_initialize == ["ResNet"] and first.global_step == 2
    trained = snapshot(module)
    first.validate(module, val_loader, verbose=False)
    first.fit(module, loader, val_loader)  # max_steps already reached: configure_model runs, nothing trains
    assert count_initialize == ["ResNet"] and same(snapshot(module), trained)  # not initialised again
    ckpt = tmp_path / "two.ckpt"
    first.save_checkpoint(ckpt)

    resumed = example.GHNClassifier("resnet18", 10, "cifar10-mini")  # a new process would start from here
    again = trainer(2)
    again.fit(resumed, loader, val_loader, ckpt_path=ckpt)
    assert again.global_step == 2 and same(snapshot(resumed), trained)  # the checkpoint's weights, not the GHN's
    again = trainer(3)
    again.fit(resumed, loader, val_loader, ckpt_path=ckpt)  # one more step, from the checkpoint
    assert again.global_step == 3 and not same(snapshot(resumed), trained)

    loaded = example.GHNClassifier.load_from_checkpoint(ckpt)  # calls configure_model, then loads the weights
    assert same(snapshot(loaded), trained)
    trainer(1).validate(loaded, val_loader, verbose=False)
    assert same(snapshot(loaded), trained)
    assert count_initialize == ["ResNet"] * 3  # once per new module (its GHN start replaced by the checkpoint)


@pytest.mark.parametrize(("name", "package"), [("lightning_module", "lightning"), ("hf_trainer", "accelerate")])
def test_examples_help(name, package, capsys):
    pytest.importorskip(package)
    with pytest.raises(SystemExit) as exit:
        load_example(name).main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and "--max-steps" in out and "--data-dir" in out


def test_hf_trainer_example_runs(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    example = load_example("hf_trainer")  # in this process: the Lightning example is the one run as a script
    result = example.main(["--max-steps", "2", "--eval-batches", "1", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ViTForImageClassification initialised by cifar10-mini" in out and "steps 2," in out, out
    assert result["global_step"] == 2 and result["same_logits"] is True
    assert "reloaded with from_pretrained, same logits: True" in out
    assert (tmp_path / "model" / "config.json").is_file()


def test_hf_trainer_trains_the_ghn_start_and_saves_it(tmp_path, count_initialize):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    example = load_example("hf_trainer")
    model = transformers.AutoModelForImageClassification.from_config(example.tiny_vit_config(32, 10))
    report = ghninit.initialize(model, ghn="cifar10-mini")
    assert report.n_params_predicted > 0.9 * report.n_params_total
    start = snapshot(model)
    train, _ = example.datasets_for(None, 32, 10)

    def train_steps(lr: float, steps: int, folder: str):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / folder),
            max_steps=steps,
            per_device_train_batch_size=16,
            learning_rate=lr,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        transformers.Trainer(model=model, args=args, train_dataset=train).train()

    train_steps(0.0, 1, "zero")  # a step with learning rate 0: the Trainer trains the GHN's weights as they are
    assert same(snapshot(model), start)
    train_steps(1e-3, 2, "two")
    trained = snapshot(model)
    assert not same(trained, start)
    model.save_pretrained(tmp_path / "saved")
    reloaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "saved")
    assert same(snapshot(reloaded), trained)
    assert count_initialize == ["ViTForImageClassification"]
