"""100-shot CIFAR-10 fine-tuning: GHN-2 predicted parameters vs He initialisation.

Checks the practical claim of the GHN-2 paper (NeurIPS 2021, section 5.3, Table 6) on your
machine. For every seed, architecture and initialisation:

1. draw 100 training images per class with the seed (1,000 in all) and hold 200 of them out
   (20 per class);
2. initialise the network (He, or He then everything the GHN predicts; the classifier is a fresh
   10-way layer when the GHN's label set is not CIFAR-10's, as in the paper);
3. choose the learning rate and weight decay from a small grid: train on the other 800 images,
   keep the pair with the best accuracy on the 200 held-out ones;
4. train on all 1,000 images with those (SGD, momentum 0.9, cosine schedule, batch 64, random
   crop and flip, 50 epochs) and evaluate on the 10,000 test images after every epoch.

Architectures: ResNet-50 (torchvision, stem adapted to 32x32), a small ViT (6 blocks, width 192)
and the 14-cell DARTS network of ``ghninit.deepnets``. Outputs, in ``--out-dir``:
``finetune_cifar10.{json,md,png}`` (mean ± std over seeds, accuracy per epoch) and
``runs/<arch>-<init>-seed<k>.json``, one per finished run: rerun the same command to resume.

Examples::

    python benchmarks/finetune_cifar10.py --data-dir data/cifar10 --download --ghn imagenet
    python benchmarks/finetune_cifar10.py --data-dir ../shared/data/cifar10-jpeg --ghn cifar10-mini --quick
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from finetune.data import augment, few_shot_split, load_cifar10, normalize
from finetune.init import initialise, report_summary, resolve_ghn, same_task_warning
from finetune.models import CIFAR_ARCHS, available_archs, build_classifier
from finetune.recipes import warmup_cosine  # noqa: E402
from finetune.runs import add_common_args, fill_defaults, progress, run_benchmark

FULL = {
    "seeds": [0, 1, 2],
    "epochs": 50,
    "search_epochs": None,  # = epochs
    "shots": 100,
    "holdout": 200,
    "lrs": [0.01, 0.03, 0.1],
    "wds": [1e-4, 1e-3],
    "test_limit": 0,
    "eval_every": 1,
}
QUICK = {"seeds": [0], "epochs": 2, "shots": 10, "holdout": 20, "lrs": [0.03], "wds": [5e-4], "test_limit": 200}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; options left unset take the full protocol's values or, with --quick, the smoke run's."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Full protocol defaults: {FULL}. --quick changes: {QUICK}.",
    )
    parser.add_argument(
        "--data-dir",
        default="data/cifar10",
        help="ImageFolder tree (train/, test/) or torchvision's cifar-10-batches-py parent (default: data/cifar10)",
    )
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if it is not there")
    add_common_args(parser, CIFAR_ARCHS, CIFAR_ARCHS, "benchmarks/results/finetune_cifar10")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 50)")
    parser.add_argument(
        "--search-epochs", type=int, default=None, help="epochs of each grid-search candidate (default: --epochs)"
    )
    parser.add_argument("--shots", type=int, default=None, help="training images per class (default: 100)")
    parser.add_argument(
        "--holdout",
        type=int,
        default=None,
        help="of those, images held out to choose lr and weight decay (default: 200)",
    )
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=None, help="learning-rate grid (default: 0.01 0.03 0.1)"
    )
    parser.add_argument("--wds", nargs="+", type=float, default=None, help="weight-decay grid (default: 1e-4 1e-3)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    parser.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        help="linear learning-rate warmup per step over this many epochs, then cosine (default: 0, none)",
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="evaluate on this many test images, the same number per class (default: 0 = all 10,000)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="evaluate on the test images every this many epochs, and after the last (default: 1)",
    )
    args = fill_defaults(parser.parse_args(argv), FULL, QUICK)
    if args.search_epochs is None:
        args.search_epochs = args.epochs
    return args


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in % of ``model`` on uint8 ``images``, in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(normalize(images[start : start + batch_size]))
        correct += (logits.argmax(1) == labels[start : start + batch_size]).sum().item()
    return 100.0 * correct / max(len(images), 1)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eval_images: torch.Tensor,
    eval_labels: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    wd: float,
    momentum: float,
    batch_size: int,
    seed: int,
    eval_epochs: Sequence[int],
    desc: str,
    warmup_epochs: float = 0.0,
) -> dict[str, Any]:
    """Train with SGD and a per-step cosine schedule (after an optional linear warmup); evaluate after each epoch in ``eval_epochs``.

    The data order and augmentation come from a generator seeded with ``seed``, so the He and GHN
    runs of a seed see the same batches. A non-finite loss stops training (``diverged``); the
    evaluations still due are then all the diverged model's.

    Returns:
        ``curve`` (``{"epochs", "values"}``, accuracy in %), ``final`` (the last value),
        ``train_loss`` per epoch and ``diverged``.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    steps = epochs * math.ceil(len(images) / batch_size)
    warmup = int(round(warmup_epochs * math.ceil(len(images) / batch_size)))
    if warmup:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, steps))
    else:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    generator = torch.Generator().manual_seed(seed)
    curve: dict[str, list] = {"epochs": [], "values": []}
    losses: list[float] = []
    diverged = False
    bar = progress(range(1, epochs + 1), desc)
    for epoch in bar:
        model.train()
        total = 0.0
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(normalize(augment(images[batch], generator))), labels[batch])
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        if diverged:
            break
        losses.append(total / len(images))
        if epoch in eval_epochs:
            curve["epochs"].append(epoch)
            curve["values"].append(accuracy(model, eval_images, eval_labels))
        acc = f"{curve['values'][-1]:.1f}" if curve["values"] else "-"
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=acc, refresh=False)  # drawn at tqdm's own pace
    if diverged:
        value = accuracy(model, eval_images, eval_labels)
        for epoch in eval_epochs:
            if epoch not in curve["epochs"]:
                curve["epochs"].append(epoch)
                curve["values"].append(value)
    return {"curve": curve, "final": curve["values"][-1], "train_loss": losses, "diverged": diverged}


def eval_schedule(epochs: int, every: int) -> list[int]:
    """Epochs after which to evaluate: every ``every``-th and the last."""
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the summary ``{arch: {init: {"mean", "std", "n", "values"}}}``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = available_archs(args.archs, CIFAR_ARCHS, cifar=True)
    ghn, ghn_info = resolve_ghn(args.ghn) if any(i.startswith("ghn") for i in args.init) else (None, None)
    if warning := same_task_warning(ghn_info, "cifar10"):
        warnings.warn(warning, UserWarning, stacklevel=1)
    train_set = load_cifar10(args.data_dir, train=True, download=args.download)
    test_set = load_cifar10(args.data_dir, train=False, download=args.download)
    if args.test_limit:
        test_index = few_shot_split(test_set.labels, args.test_limit // 10, 0, seed=0).train
    else:
        test_index = list(range(len(test_set)))
    test_data: dict[str, torch.Tensor] = {}  # read on first use: a fully resumed run needs no image

    def test_images() -> tuple[torch.Tensor, torch.Tensor]:
        if not test_data:
            test_data["x"] = test_set.read(test_index)
            test_data["y"] = torch.tensor([test_set.labels[i] for i in test_index])
        return test_data["x"], test_data["y"]

    protocol = {
        "shots": args.shots,
        "holdout": args.holdout,
        "epochs": args.epochs,
        "search_epochs": args.search_epochs,
        "lrs": args.lrs,
        "wds": args.wds,
        "batch_size": args.batch_size,
        "momentum": args.momentum,
        "test_images": len(test_index),
        "eval_every": args.eval_every,
    }
    if args.warmup_epochs:  # only then, so runs made before the option existed still match
        protocol["warmup_epochs"] = args.warmup_epochs

    def make_model(arch: str, init: str, seed: int) -> tuple[nn.Module, Any]:
        torch.manual_seed(seed)
        model = build_classifier(arch, 10, cifar=True)
        return model, initialise(model, init, ghn, args.postprocess)

    def run(arch: str, init: str, seed: int) -> dict[str, Any]:
        start = time.time()
        split = few_shot_split(train_set.labels, args.shots, args.holdout, seed)
        row = {index: k for k, index in enumerate(split.train)}
        images = train_set.read(split.train)
        labels = torch.tensor([train_set.labels[i] for i in split.train])
        fit = torch.tensor([row[i] for i in split.fit])
        val = torch.tensor([row[i] for i in split.val])
        common = {"momentum": args.momentum, "batch_size": args.batch_size, "seed": seed, "warmup_epochs": args.warmup_epochs}
        grid = []
        candidates = list(itertools.product(args.lrs, args.wds))
        if len(candidates) > 1:
            for lr, wd in candidates:
                model, _ = make_model(arch, init, seed)
                result = train(
                    model,
                    images[fit],
                    labels[fit],
                    images[val],
                    labels[val],
                    epochs=args.search_epochs,
                    lr=lr,
                    wd=wd,
                    eval_epochs=[args.search_epochs],
                    desc=f"{arch} {init} s{seed} grid lr={lr:g} wd={wd:g}",
                    **common,
                )
                grid.append({"lr": lr, "wd": wd, "val_acc": result["final"], "diverged": result["diverged"]})
            best = max(grid, key=lambda g: g["val_acc"])  # first of equals: the grid's order
            lr, wd = best["lr"], best["wd"]
        else:
            lr, wd = candidates[0]
        model, report = make_model(arch, init, seed)
        x_test, y_test = test_images()
        result = train(
            model,
            images,
            labels,
            x_test,
            y_test,
            epochs=args.epochs,
            lr=lr,
            wd=wd,
            eval_epochs=eval_schedule(args.epochs, args.eval_every),
            desc=f"{arch} {init} s{seed} lr={lr:g} wd={wd:g}",
            **common,
        )
        return {
            "lr": lr,
            "wd": wd,
            "grid": grid,
            **result,
            "ghn_report": report_summary(report),
            "seconds": time.time() - start,
        }

    text = (
        f"{args.shots} images/class, {args.holdout} held out for the lr x wd grid {args.lrs} x {args.wds} "
        f"({args.search_epochs} epochs each), then {args.epochs} epochs on all, SGD momentum {args.momentum}, "
        f"batch {args.batch_size}, cosine schedule, crop+flip; test on {len(test_index)} images "
        f"(every {args.eval_every} epochs); 32x32 inputs"
    )
    title = "100-shot CIFAR-10 fine-tuning: test accuracy"
    return run_benchmark(
        "finetune_cifar10", title, "test accuracy (%)", text, args, argv, ghn_info, args.data_dir, archs, protocol, run
    )


if __name__ == "__main__":
    main()
