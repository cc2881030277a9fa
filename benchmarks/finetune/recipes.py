"""Standard training recipes run from each start, for ``benchmarks/recipes.py``.

A *recipe* is what a user's training script would do (optimiser, peak learning rate, a linear
warmup, then cosine decay to zero, per step); a *start* is how the model's parameters are set
before the first step (the model's own initialisation, He's, a GHN's, a GHN's post-processed).
:func:`train_run` trains one (architecture, recipe, start, seed) on a CIFAR-10 subset and
evaluates top-1 on the test images after every epoch. It saves a checkpoint after each epoch
(model, optimiser, scheduler, data-order generator, history) so that a stopped run resumes at
the last finished epoch and ends with the same numbers as an uninterrupted one.

The batches of a seed are the same for every start (the order and the augmentation come from a
generator seeded with the seed alone), so two starts of a seed differ only in their parameters.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import augment
from .starts import make_start


@dataclass(frozen=True)
class Recipe:
    """Optimiser settings of one recipe. ``warmup_epochs`` of linear warmup, then cosine to zero."""

    optimizer: str  # "sgd" (momentum 0.9, Nesterov) or "adamw"
    lr: float
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4


RECIPES: dict[str, Recipe] = {
    "sgd-0.05": Recipe("sgd", 0.05),
    "sgd-0.05-w1": Recipe("sgd", 0.05, warmup_epochs=1),
    "sgd-0.1": Recipe("sgd", 0.1),
    "sgd-0.1-w1": Recipe("sgd", 0.1, warmup_epochs=1),
    "adamw-w1": Recipe("adamw", 1e-3, warmup_epochs=1, weight_decay=0.05),
}

def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As timm does: no weight decay on biases and normalisation parameters (1-D tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``step``: linear from ``1/warmup`` to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

    return factor


def make_optimizer(model: nn.Module, recipe: Recipe, steps_per_epoch: int, epochs: int):
    """The optimiser and a per-step scheduler: linear warmup over ``warmup_epochs``, then cosine to 0."""
    groups = _param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    elif recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=recipe.lr)
    else:
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, steps_per_epoch * epochs))


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalize: Callable) -> dict[str, float]:
    """Top-1 (%) and mean cross-entropy on the test images, in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(labels), 500):
        logits = model(normalize(images[i : i + 500]))
        y = labels[i : i + 500]
        correct += (logits.argmax(1) == y).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
    model.train(was_training)
    return {"top1": 100.0 * correct / len(labels), "loss": loss / len(labels)}


@dataclass
class RunSpec:
    """One run: what is trained, how, and on how much data."""

    arch: str
    recipe: str
    start: str
    seed: int
    epochs: int = 5
    train_images: int = 10_000
    test_images: int = 10_000
    batch_size: int = 128
    ghn: str = "cifar10-mini"

    @property
    def key(self) -> str:
        return f"{self.arch}-{self.recipe}-{self.start.replace('+', '_')}-seed{self.seed}"

    def config(self) -> dict[str, Any]:
        return {**asdict(self), "recipe_settings": asdict(RECIPES[self.recipe])}


def train_run(
    spec: RunSpec,
    train: Any,
    test: Any,
    ghn: Any,
    checkpoint: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``spec`` and return its record; resumes from ``checkpoint`` when it exists.

    ``train`` and ``test`` are :class:`ghninit.training.data.ImageTensors`; the first
    ``spec.train_images`` / ``spec.test_images`` of each are used. The record holds per-epoch
    test top-1 and loss (index 0 is before training), mean training loss per epoch, the losses of
    the first 20 steps, the largest training loss, and whether a loss became non-finite (the run
    then stops: a diverged run is recorded, not hidden).
    """
    recipe = RECIPES[spec.recipe]
    images, labels = train.images[: spec.train_images], train.labels[: spec.train_images]
    test_images, test_labels = test.images[: spec.test_images], test.labels[: spec.test_images]
    steps_per_epoch = len(labels) // spec.batch_size
    t0 = time.process_time()
    calibration = train.normalize(images[: spec.batch_size]) if "[" in spec.start else None
    model, start_info = make_start(spec.arch, spec.start, ghn, spec.seed, calibration)
    init_cpu = time.process_time() - t0
    model.train()
    opt, sched = make_optimizer(model, recipe, steps_per_epoch, spec.epochs)
    generator = torch.Generator().manual_seed(spec.seed)
    history: dict[str, Any] = {"test_top1": [], "test_loss": [], "train_loss": [], "first_losses": [], "max_loss": 0.0}
    epoch = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        history, epoch = state["history"], state["epoch"]
        log(f"{spec.key}: resumed after epoch {epoch}")
    else:
        ev = evaluate(model, test_images, test_labels, train.normalize)
        history["test_top1"].append(ev["top1"])
        history["test_loss"].append(ev["loss"])
    diverged = history.get("diverged", False)
    while epoch < spec.epochs and not diverged:
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * spec.batch_size : (s + 1) * spec.batch_size]
            x = train.normalize(augment(images[idx], generator))
            loss = F.cross_entropy(model(x), labels[idx])
            value = loss.item()
            if not math.isfinite(value):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += value
            history["max_loss"] = max(history["max_loss"], value)
            if len(history["first_losses"]) < 20:
                history["first_losses"].append(value)
        epoch += 1
        history["diverged"] = diverged
        history["train_loss"].append(total / steps_per_epoch)
        ev = evaluate(model, test_images, test_labels, train.normalize)
        history["test_top1"].append(ev["top1"])
        history["test_loss"].append(ev["loss"])
        log(f"{spec.key}: epoch {epoch}/{spec.epochs} train loss {history['train_loss'][-1]:.3f} test top-1 {ev['top1']:.2f}")
        _save_checkpoint(checkpoint, model, opt, sched, generator, history, epoch)
    return {"key": spec.key, "config": spec.config(), "start_info": start_info, "init_cpu_s": init_cpu, **history}


def _save_checkpoint(path: Path, model, opt, sched, generator, history, epoch) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": generator.get_state(),
        "history": history,
        "epoch": epoch,
    }
    torch.save(state, tmp)
    os.replace(tmp, path)
