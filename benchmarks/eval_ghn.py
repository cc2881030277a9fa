"""Evaluate a GHN: top-1 of predicted parameters (no training) on DeepNets-1M architectures and torchvision models.

As in the paper, networks are evaluated right after prediction, with BatchNorm normalising by
the statistics of each test batch (batch 64); ``--bn calibrate`` instead estimates running
statistics on training images first and evaluates in eval mode. ``--init he`` evaluates the same
networks with He (Kaiming) initialisation instead, the baseline every number should be compared
with (chance is 10% on CIFAR-10).

Examples:

    python benchmarks/eval_ghn.py --ghn cifar10-mini --split test -n 100 --models resnet18,resnet50
    python benchmarks/eval_ghn.py --init he --split test -n 100 --models resnet18,resnet50
    python benchmarks/eval_ghn.py --ghn runs/ghn2/final --split wide -n 20 --bn calibrate

Writes a JSON file with every network's accuracy (--out) and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the finetune package, also when imported

from finetune.init import he_init_  # noqa: E402

import ghninit  # noqa: E402
from ghninit import deepnets  # noqa: E402
from ghninit.training.data import ImageTensors, TrainBatches, load_cifar10  # noqa: E402


def _set_bn_mode(model: nn.Module, batch_stats: bool) -> None:
    """Eval mode everywhere (no dropout), except BatchNorm in train mode when using batch statistics."""
    model.eval()
    if batch_stats:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


@torch.no_grad()
def calibrate_bn(model: nn.Module, train: ImageTensors, batches: int, batch_size: int, seed: int) -> None:
    """Estimate BatchNorm running statistics on ``batches`` augmented training batches (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    _set_bn_mode(model, True)
    stream = TrainBatches(train, batch_size, seed=seed)
    for step in range(batches):
        model(stream.batch(step)[0])


@torch.no_grad()
def accuracy(model: nn.Module, test: ImageTensors, batch_size: int, batch_stats: bool) -> float:
    """Top-1 (%) on ``test``; BatchNorm with batch statistics if ``batch_stats``."""
    _set_bn_mode(model, batch_stats)
    correct = 0
    for images, labels in test.batches(batch_size):
        correct += (model(images).argmax(1) == labels).sum().item()
    return 100.0 * correct / len(test)


def torchvision_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A torchvision classifier, adapted to 32x32 inputs for CIFAR-10 as the reference does."""
    import torchvision

    model = torchvision.models.get_model(name, num_classes=num_classes)
    if image_size <= 64:
        from ghninit.adapt import adapt_to_cifar

        adapt_to_cifar(model)
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ghn", default="cifar10-mini", help="GHN to evaluate: name, folder, .safetensors or .pt")
    p.add_argument("--init", choices=["ghn", "he"], default="ghn", help="predicted parameters or He init (baseline)")
    p.add_argument(
        "--data-dir", default="../shared/data/cifar10-jpeg", help="CIFAR-10 folder (ImageFolder or torchvision)"
    )
    p.add_argument(
        "--split", default="test", help="DeepNets-1M split (test, val, wide, deep, dense, bnfree); 'none' to skip"
    )
    p.add_argument("-n", "--num-nets", type=int, default=100, help="architectures 0..n-1 of the split (default: 100)")
    p.add_argument("--start", type=int, default=0, help="first architecture index (default: 0)")
    p.add_argument("--models", default="", help="comma-separated torchvision models, e.g. resnet18,resnet50")
    p.add_argument("--images", type=int, default=None, help="evaluate on this many test images (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="test batch size (default: 64, as in the paper)")
    p.add_argument(
        "--bn",
        choices=["batch", "calibrate"],
        default="batch",
        help="BatchNorm statistics: of each test batch (default, as in the paper) or calibrated on training images",
    )
    p.add_argument(
        "--calibrate-batches", type=int, default=50, help="training batches for --bn calibrate (default: 50)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for He init and calibration batches")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", help="JSON file for the per-network results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_cifar10(args.data_dir, False).subset(args.images)
    train = load_cifar10(args.data_dir, True) if args.bn == "calibrate" else None
    ghn = ghninit.load_ghn(args.ghn) if args.init == "ghn" else None
    calibrate = args.bn == "calibrate"

    def evaluate(model: nn.Module, key: str) -> dict:
        t = time.perf_counter()
        if ghn is not None:
            ghninit.initialize(model, ghn=ghn)
        else:
            torch.manual_seed(args.seed)
            he_init_(model)
        if calibrate:
            calibrate_bn(model, train, args.calibrate_batches, args.batch_size, args.seed)
        acc = accuracy(model, test, args.batch_size, batch_stats=not calibrate)
        return {
            "name": key,
            "top1": acc,
            "params": sum(p.numel() for p in model.parameters()),
            "seconds": time.perf_counter() - t,
        }

    results: dict[str, list[dict]] = {}
    if args.split.lower() != "none" and args.num_nets > 0:
        rows = []
        indices = range(args.start, args.start + args.num_nets)
        bar = tqdm(indices, desc=f"{args.split} ({args.init})", dynamic_ncols=True)
        for i in bar:
            spec = deepnets.generate(args.split, i)
            model = spec.build(10, 32, norm="bn-track" if calibrate else True)
            rows.append({**evaluate(model, f"{args.split}[{i}]"), "index": i})
            bar.set_postfix(mean=f"{sum(r['top1'] for r in rows) / len(rows):.1f}")
        results[args.split] = rows
    for name in [m for m in args.models.split(",") if m]:
        torch.manual_seed(args.seed)
        results[name] = [evaluate(torchvision_model(name, 10, 32), name)]

    source = args.ghn if ghn is not None else "He init"
    print(
        f"\n{source}, BatchNorm: {'calibrated running' if calibrate else 'test-batch'} statistics, "
        f"{len(test)} CIFAR-10 test images\n"
    )
    print("| networks | n | mean top-1 | std | max (index) |\n|---|---|---|---|---|")
    summary = {}
    for key, rows in results.items():
        accs = torch.tensor([r["top1"] for r in rows])
        best = rows[int(accs.argmax())]
        std = float(accs.std()) if len(rows) > 1 else 0.0
        summary[key] = {
            "n": len(rows),
            "mean": float(accs.mean()),
            "std": std,
            "max": best["top1"],
            "argmax": best["name"],
        }
        std_text = f"{std:.1f}" if len(rows) > 1 else "-"
        print(f"| {key} | {len(rows)} | {float(accs.mean()):.1f} | {std_text} | {best['top1']:.1f} ({best['name']}) |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": vars(args), "images": len(test), "summary": summary, "results": results}
        Path(args.out).write_text(json.dumps(payload, indent=1, default=lambda o: None if math.isnan(o) else o))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
