"""``check``: compare real GHN weights with the reference's published results.

``check ghn3-t|ghn3-xl MODEL`` compares the parameter norm of a predicted torchvision model with
the GHN-3 reference's figure (:mod:`ghninit.zoo.check`); ``check ghn2-cifar10|ghn2-imagenet
--data-dir DIR`` evaluates the GHN-2 reference's example networks with its protocol
(:mod:`ghninit.training.reference_check`).
"""

from __future__ import annotations

import argparse
import sys


def configure_check(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "GHN-3 (ghn3-t, ghn3-xl): predict torchvision MODEL and compare the L2 norm of its parameters with the "
        "reference's published figure (tolerance 1e-2). GHN-2 (ghn2-cifar10, ghn2-imagenet): predict the reference's "
        "example networks (3-conv CNN, DARTS, ViT, ResNet-50), evaluate them on --data-dir with the reference's "
        "protocol and compare with the published accuracies. Exit status 0 when all agree (or nothing is compared), "
        "1 when one does not, 2 on a usage error."
    )
    parser.add_argument("ghn", help="ghn3-t, ghn3-xl, ghn2-cifar10 or ghn2-imagenet")
    parser.add_argument("model", nargs="?", help="GHN-3: torchvision model name, e.g. resnet50")
    parser.add_argument(
        "--weights",
        default=None,
        help="a local copy of the named GHN's official file or folder (instead of downloading)",
    )
    parser.add_argument(
        "--ghn",
        dest="other_ghn",
        default=None,
        metavar="NAME|PATH",
        help="GHN-2: run the protocol with another GHN (e.g. cifar10-mini); its results are printed, not compared",
    )
    parser.add_argument(
        "--data-dir", help="GHN-2: CIFAR-10 (torchvision download or ImageFolder) or ImageNet val folder"
    )
    parser.add_argument("--networks", nargs="+", help="GHN-2: a subset of cnn darts resnet50 vit")
    parser.add_argument("--limit", type=int, help="GHN-2: only the first N images (a smoke test; nothing is compared)")
    parser.add_argument("--device", default="cpu", help="GHN-2: where to evaluate (cpu, cuda)")
    parser.add_argument("--workers", type=int, default=4, help="GHN-2 ImageNet: data loading processes (default 4)")


def run_check(args: argparse.Namespace) -> int:
    if args.ghn.startswith("ghn2-"):
        return _run_ghn2(args)
    from ..zoo.check import check_paramnorm

    if args.model is None:
        print(f"error: check {args.ghn} needs a MODEL (a torchvision name, e.g. resnet50)", file=sys.stderr)
        return 2
    try:
        result = check_paramnorm(args.ghn, args.model, args.weights)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print(result)
    return 0 if result.passed else 1


def _run_ghn2(args: argparse.Namespace) -> int:
    from ..errors import GHNLoadError
    from ..training.reference_check import PUBLISHED, check_ghn2

    if args.data_dir is None:
        print(f"error: check {args.ghn} needs --data-dir (the data set to evaluate on)", file=sys.stderr)
        return 2
    if args.weights and args.other_ghn:
        print("error: give --weights (a copy of the official file) or --ghn (another GHN), not both", file=sys.stderr)
        return 2
    compare = args.other_ghn is None
    ghn = args.other_ghn or args.weights
    if args.ghn in PUBLISHED:
        if not compare:
            print(f"{args.ghn} protocol with {ghn}: not the published weights, so results are not compared")
        elif args.limit is not None:
            print(f"--limit {args.limit}: a subset of the images, so results are not compared")
    try:
        results = check_ghn2(
            args.ghn,
            args.data_dir,
            ghn=ghn,
            compare=compare,
            networks=args.networks,
            limit=args.limit,
            device=args.device,
            workers=args.workers,
        )
    except (KeyError, FileNotFoundError, GHNLoadError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    verdicts = [r.passed for r in results if r.passed is not None]
    if verdicts:
        print(f"{sum(verdicts)}/{len(verdicts)} PASS")
    return 0 if all(verdicts) else 1
