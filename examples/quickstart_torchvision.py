"""Quickstart: initialise a torchvision model with a GHN and look at what it gives.

    python examples/quickstart_torchvision.py                    # shipped cifar10-mini GHN, no network
    python examples/quickstart_torchvision.py --data-dir ../shared/data/cifar10-jpeg   # + top-1, no training
    python examples/quickstart_torchvision.py --ghn imagenet --model resnet50          # published GHN-2 (downloaded once, cached)

A GHN trained on CIFAR-10 (10 classes) predicts parameters for 32x32 inputs, so the model is
first adapted to 32x32 (``ghninit.adapt.adapt_to_cifar``, ResNets, DenseNets and MobileNets). With
``--data-dir`` (a CIFAR-10 ImageFolder or torchvision copy), the initialised model is evaluated on
1,000 test images before any training, next to the same model with PyTorch's default init.
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import ghninit
from ghninit.adapt import adapt_to_cifar
from ghninit.training.data import ImageTensors, load_cifar10


def build(name: str, num_classes: int, cifar: bool) -> torch.nn.Module:
    """A torchvision classifier, adapted to 32x32 inputs when ``cifar``."""
    model = torchvision.models.get_model(name, num_classes=num_classes)
    return adapt_to_cifar(model) if cifar else model


@torch.no_grad()
def top1(model: torch.nn.Module, test: ImageTensors) -> float:
    """Top-1 (%) on ``test``, BatchNorm on each batch's statistics."""
    model.eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()  # no trained running statistics exist yet: use the batch's, as GHN-2's paper does
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test.batches(64))
    return 100.0 * correct / len(test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ghn", default="cifar10-mini", help="GHN: shipped or known name, Hub repo id, folder or .safetensors file"
    )
    parser.add_argument("--model", default="resnet18", help="torchvision classification model (default: resnet18)")
    parser.add_argument("--num-classes", type=int, help="classes of the model (default: the GHN's)")
    parser.add_argument("--data-dir", help="CIFAR-10 folder: also report top-1 before any training")
    args = parser.parse_args(argv)

    ghn = ghninit.load_ghn(args.ghn)
    cifar = ghn.num_classes == 10
    num_classes = args.num_classes or ghn.num_classes
    torch.manual_seed(0)
    model = build(args.model, num_classes, cifar)
    report = ghninit.initialize(model, ghn=ghn)
    print(report)

    size = 32 if cifar else 224
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    print(f"forward pass OK: logits {tuple(logits.shape)}, std {logits.std():.3f}")

    if args.data_dir and cifar:
        torch.manual_seed(0)
        default = build(args.model, num_classes, cifar)
        test = load_cifar10(args.data_dir, False).subset(1000)
        print(
            f"CIFAR-10 top-1 before training: {top1(model, test):.1f}% with {args.ghn}, "
            f"{top1(default, test):.1f}% with PyTorch's default init (chance: 10%)"
        )


if __name__ == "__main__":
    main()
