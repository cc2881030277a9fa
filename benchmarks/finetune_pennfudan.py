"""Penn-Fudan pedestrian detection fine-tuning: GHN-2 predicted backbone vs He initialisation.

Checks the detection half of the GHN-2 paper's Table 6 (NeurIPS 2021, section 5.3). For every
seed, architecture and initialisation:

1. build the classification network (ResNet-50, a small ViT, the 14-cell DARTS network of
   ``ghninit.deepnets``, or MobileNetV3-Large for CPUs) and initialise it: He, or He then
   everything the GHN predicts;
2. take its feature extractor as the backbone of torchvision's Faster R-CNN (FPN for ResNet-50 and
   MobileNet, one feature map for ViT and DARTS; detection heads with torchvision's
   initialisation, the same for both initialisations of a seed);
3. fine-tune with the protocol of torchvision's detection tutorial: the 170 images in a fixed
   shuffle (``torch.manual_seed(1)``), the last 50 held out, batch 2, SGD lr 0.005, momentum 0.9,
   weight decay 5e-4, linear warm-up over the first epoch, lr x 0.1 every 3 epochs, 10 epochs,
   random horizontal flips;
4. after every epoch, measure average precision at IoU 0.50 on the 50 held-out images
   (torchmetrics ``MeanAveragePrecision``, COCO-style evaluation by pycocotools).

``--detector torchvision:NAME`` takes instead a detector built the ordinary torchvision way
(``torchvision.models.get_model(NAME, weights=None, weights_backbone=None, num_classes=2)``, e.g.
``fasterrcnn_mobilenet_v3_large_fpn``) and initialises the whole of it: He, then everything the GHN
predicts, backbone, FPN and heads (``ghninit.initialize`` traces it with an example input).

Outputs, in ``--out-dir``: ``finetune_pennfudan.{json,md,png}`` (mean ± std over seeds, AP per
epoch) and ``runs/<arch>-<init>-seed<k>.json``, one per finished run: rerun the same command to
resume.

Examples::

    python benchmarks/finetune_pennfudan.py --data-dir data --download --ghn imagenet
    python benchmarks/finetune_pennfudan.py --data-dir ../shared/data/PennFudanPed --archs mobilenet --max-size 320 --quick
    python benchmarks/finetune_pennfudan.py --data-dir ../shared/data/PennFudanPed --quick --ghn cifar10-mini \
        --detector torchvision:fasterrcnn_mobilenet_v3_large_320_fpn --init he ghn
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from finetune.data import PennFudan, find_pennfudan, hflip, pennfudan_split
from finetune.init import initialise, report_summary, resolve_ghn
from finetune.models import DETECTION_ARCHS, available_archs, build_classifier, build_detection_backbone, build_detector
from finetune.runs import add_common_args, fill_defaults, progress, run_benchmark

PAPER_ARCHS = ("resnet50", "vit", "darts")
FULL = {"seeds": [0, 1, 2], "epochs": 10, "max_size": 0, "train_limit": 0, "test_limit": 0}
QUICK = {"seeds": [0], "epochs": 1, "max_size": 256, "train_limit": 20}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; options left unset take the full protocol's values or, with --quick, the smoke run's."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Full protocol defaults: {FULL} (max_size 0 = torchvision's 800/1333 resizing). --quick changes: {QUICK}.",
    )
    parser.add_argument(
        "--data-dir",
        default="data",
        help="a PennFudanPed folder (PNGImages/, PedMasks/) or its parent (default: data)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download Penn-Fudan into --data-dir if it is not there"
    )
    add_common_args(parser, DETECTION_ARCHS, PAPER_ARCHS, "benchmarks/results/finetune_pennfudan")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 10)")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="resize images so their longer side is at most this (default: 0 = torchvision's min 800 / max 1333)",
    )
    parser.add_argument("--lr", type=float, default=0.005, help="SGD learning rate (default: %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per step (default: %(default)s)")
    parser.add_argument(
        "--lr-step", type=int, default=3, help="multiply the lr by 0.1 every this many epochs (default: 3)"
    )
    parser.add_argument(
        "--rois-per-image",
        type=int,
        default=512,
        help="proposals sampled per image to train the box head (default: torchvision's 512; fewer is faster on CPU)",
    )
    parser.add_argument(
        "--detector",
        help="torchvision:NAME: a torchvision detection model built as torchvision builds it, initialised whole, "
        "instead of --archs (e.g. torchvision:fasterrcnn_mobilenet_v3_large_fpn)",
    )
    parser.add_argument(
        "--train-limit", type=int, default=None, help="train on the first N training images only (default: 0 = all 120)"
    )
    parser.add_argument(
        "--test-limit",
        type=int,
        default=None,
        help="evaluate on the first N held-out images only (default: 0 = all 50)",
    )
    return fill_defaults(parser.parse_args(argv), FULL, QUICK)


def torchvision_detector(spec: str, max_size: int | None, rois_per_image: int) -> nn.Module:
    """``torchvision:NAME``: the torchvision detection model NAME for pedestrians (2 classes), random weights."""
    import torchvision

    source, _, name = spec.partition(":")
    detection = torchvision.models.list_models(module=torchvision.models.detection)
    if source != "torchvision" or name not in detection:
        raise SystemExit(f"--detector {spec!r}: expected torchvision:NAME with NAME one of {detection}")
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": 2}
    if max_size is not None:
        kwargs.update(min_size=min(800, max_size), max_size=max_size)
    if name.startswith(("fasterrcnn", "maskrcnn", "keypointrcnn")):
        kwargs["box_batch_size_per_image"] = rois_per_image
    return torchvision.models.get_model(name, **kwargs)


def _as_batch(dataset: PennFudan, indices: Sequence[int]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*(dataset[i] for i in indices))
    return list(images), list(targets)


@torch.no_grad()
def average_precision_50(model: nn.Module, dataset: PennFudan, indices: Sequence[int], batch_size: int = 2) -> float:
    """Average precision at IoU 0.50 (in %) of ``model`` on ``dataset[indices]``, by torchmetrics."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5])
    model.eval()
    for start in range(0, len(indices), batch_size):
        images, targets = _as_batch(dataset, indices[start : start + batch_size])
        predictions = model(images)
        metric.update(
            [{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions],
            [{k: t[k] for k in ("boxes", "labels")} for t in targets],
        )
    return 100.0 * metric.compute()["map_50"].item()


def learning_rate(base: float, epoch: int, step: int, steps_per_epoch: int, lr_step: int) -> float:
    """The tutorial's schedule: linear warm-up from base/1000 over the first epoch, x0.1 every ``lr_step`` epochs.

    ``epoch`` counts from 0, ``step`` is the iteration within the epoch.
    """
    lr = base * 0.1 ** (epoch // lr_step)
    if epoch == 0:
        warmup_iters = min(1000, steps_per_epoch - 1)
        if warmup_iters > 0 and step < warmup_iters:
            alpha = step / warmup_iters
            lr *= 1 / 1000 * (1 - alpha) + alpha
    return lr


def finetune(
    model: nn.Module,
    dataset: PennFudan,
    train_index: Sequence[int],
    test_index: Sequence[int],
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    lr_step: int,
    seed: int,
    desc: str,
) -> dict[str, Any]:
    """Fine-tune a detector; AP50 on ``test_index`` after every epoch.

    Batches and flips come from a generator seeded with ``seed``. A non-finite loss stops training
    (``diverged``); the evaluations still due are then all the diverged model's.

    Returns:
        ``curve`` (``{"epochs", "values"}``, AP50 in %), ``final``, ``train_loss`` per epoch, ``diverged``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    order = torch.tensor(list(train_index))
    steps_per_epoch = -(-len(order) // batch_size)
    curve: dict[str, list] = {"epochs": [], "values": []}
    losses: list[float] = []
    diverged = False
    for epoch in range(epochs):
        model.train()
        total = 0.0
        batches = order[torch.randperm(len(order), generator=generator)].split(batch_size)
        bar = progress(enumerate(batches), f"{desc} epoch {epoch + 1}/{epochs}", total=len(batches))
        for step, batch in bar:
            images, targets = _as_batch(dataset, batch.tolist())
            flips = (torch.rand(len(images), generator=generator) < 0.5).tolist()
            pairs = [hflip(i, t) if flip else (i, t) for i, t, flip in zip(images, targets, flips)]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(lr, epoch, step, steps_per_epoch, lr_step)
            loss = sum(model([p[0] for p in pairs], [p[1] for p in pairs]).values())
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if diverged:
            break
        losses.append(total / steps_per_epoch)
        curve["epochs"].append(epoch + 1)
        curve["values"].append(average_precision_50(model, dataset, test_index))
        print(f"{desc} epoch {epoch + 1}: loss {losses[-1]:.3f}, AP50 {curve['values'][-1]:.2f}", file=sys.stderr)
    if diverged:
        value = average_precision_50(model, dataset, test_index)
        curve["epochs"] += list(range(len(curve["epochs"]) + 1, epochs + 1))
        curve["values"] += [value] * (epochs - len(curve["values"]))
    return {"curve": curve, "final": curve["values"][-1], "train_loss": losses, "diverged": diverged}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the summary ``{arch: {init: {"mean", "std", "n", "values"}}}``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # a detector's runs are labelled by its torchvision name (file names carry no ':')
    archs = (
        [args.detector.partition(":")[2]] if args.detector else available_archs(args.archs, PAPER_ARCHS, cifar=False)
    )
    if args.detector:
        torchvision_detector(args.detector, args.max_size or None, args.rois_per_image)  # fails early if unknown
    ghn, ghn_info = resolve_ghn(args.ghn) if any(i.startswith("ghn") for i in args.init) else (None, None)
    dataset = PennFudan(find_pennfudan(args.data_dir, download=args.download))
    train_index, test_index = pennfudan_split(len(dataset))
    train_index = train_index[: args.train_limit or None]
    test_index = test_index[: args.test_limit or None]
    # The classification network the backbone comes from has the GHN's classes (its head is dropped).
    num_classes = ghn.num_classes if ghn is not None else 1000

    protocol = {
        "epochs": args.epochs,
        "max_size": args.max_size,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "lr_step": args.lr_step,
        "rois_per_image": args.rois_per_image,
        "train_images": len(train_index),
        "test_images": len(test_index),
    }

    def finetune_run(model: nn.Module, seed: int, desc: str) -> dict[str, Any]:
        return finetune(
            model,
            dataset,
            train_index,
            test_index,
            epochs=args.epochs,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            lr_step=args.lr_step,
            seed=seed,
            desc=desc,
        )

    def run(arch: str, init: str, seed: int) -> dict[str, Any]:
        start = time.time()
        torch.manual_seed(seed)
        if args.detector:  # the whole torchvision detector: He, then what the GHN predicts
            model = torchvision_detector(args.detector, args.max_size or None, args.rois_per_image)
            report = initialise(model, init, ghn, args.postprocess)
            result = finetune_run(model, seed, f"{arch} {init} s{seed}")
            return {**result, "ghn_report": report_summary(report), "seconds": time.time() - start}
        classifier = build_classifier(arch, num_classes, cifar=False)
        report = initialise(classifier, init, ghn, args.postprocess)
        torch.manual_seed(seed)  # the same detection heads for He and GHN
        model = build_detector(
            build_detection_backbone(arch, classifier), 2, args.max_size or None, args.rois_per_image
        )
        result = finetune_run(model, seed, f"{arch} {init} s{seed}")
        return {**result, "ghn_report": report_summary(report), "seconds": time.time() - start}

    size = f"longer side <= {args.max_size} px" if args.max_size else "torchvision's resizing (min 800, max 1333)"
    text = (
        f"Faster R-CNN, {len(train_index)} training / {len(test_index)} held-out images (tutorial split), "
        f"{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} (warm-up, x0.1 every {args.lr_step} epochs), "
        f"momentum {args.momentum}, weight decay {args.weight_decay}, flips, {size}, {args.rois_per_image} RoIs/image"
    )
    title = "Penn-Fudan pedestrian detection fine-tuning: AP at IoU 0.50"
    return run_benchmark(
        "finetune_pennfudan", title, "AP50 (%)", text, args, argv, ghn_info, dataset.root, archs, protocol, run
    )


if __name__ == "__main__":
    main()
