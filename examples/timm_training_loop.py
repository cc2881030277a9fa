"""Drop-in for a timm training loop: one call to ghninit.initialize, then your usual loop.

Trains the same timm model from several starts for the same few steps, on the same batches, and
prints their losses side by side: timm's own initialisation, the GHN's prediction, and the GHN's
prediction post-processed for fine-tuning (``postprocess=True``: each conv/linear weight but the
classifier made orthogonal, as Knyazev, arXiv 2207.10049 recommends; see ghninit.write.postprocess). Pass an ImageFolder with
--data-dir (e.g. ../shared/data/cifar10-jpeg/train) to train on real images; without it the loop
runs on torchvision's FakeData (random images and labels: the loss can only fall by memorising
them), so it runs anywhere in about a minute.

    python examples/timm_training_loop.py                          # shipped cifar10-mini GHN, no network
    python examples/timm_training_loop.py --data-dir ../shared/data/cifar10-jpeg/train
    python examples/timm_training_loop.py --ghn imagenet --model resnet50 --image-size 224 --num-classes 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import ghninit

STARTS = {
    "timm": "timm's own initialisation",
    "ghn": "ghninit.initialize(model, ghn=...)",
    "ghn-post": "ghninit.initialize(model, ghn=..., postprocess=True)",
}


def make_loader(data_dir: Path | None, image_size: int, batch_size: int, num_classes: int) -> DataLoader:
    """The same batches, in the same order, every time it is iterated from a fresh generator."""
    tf = [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    tf.append(transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    if data_dir is None:
        data = datasets.FakeData(256, (3, image_size, image_size), num_classes, transform=transforms.Compose(tf))
    else:
        data = datasets.ImageFolder(str(data_dir), transform=transforms.Compose(tf))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def train(model: nn.Module, loader: DataLoader, steps: int, lr: float) -> list[float]:
    """Your usual loop, unchanged: SGD with momentum; returns the loss of every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    losses: list[float] = []
    loader.generator.manual_seed(0)  # every start sees the same batches
    while len(losses) < steps:
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) >= steps:
                break
    return losses


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ghn", default="cifar10-mini", help="GHN: shipped or known name, Hub repo id, folder or .safetensors file"
    )
    parser.add_argument("--model", default="resnet18", help="timm model name (default: resnet18)")
    parser.add_argument("--data-dir", type=Path, default=None, help="ImageFolder root (default: FakeData)")
    parser.add_argument("--starts", nargs="+", choices=list(STARTS), default=list(STARTS), help="starts to compare")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)

    loader = make_loader(args.data_dir, args.image_size, args.batch_size, args.num_classes)
    ghn = ghninit.load_ghn(args.ghn) if any(s != "timm" for s in args.starts) else None
    curves = {}
    for start in args.starts:
        torch.manual_seed(0)
        model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
        if start != "timm":
            report = ghninit.initialize(model, ghn=ghn, postprocess=start == "ghn-post")  # <- the only new line
            print(report, end="\n\n")
        curves[start] = train(model, loader, args.steps, args.lr)

    print(f"{args.model}, {'FakeData' if args.data_dir is None else args.data_dir}, SGD lr {args.lr}: training loss")
    for start in args.starts:
        print(f"  {start:8s} = {STARTS[start]}")
    print("step  " + "".join(f"{s:>10s}" for s in args.starts))
    for step in range(1, args.steps + 1):
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"{step:4d}  " + "".join(f"{curves[s][step - 1]:10.3f}" for s in args.starts))
    window = min(5, args.steps)
    print(
        f"mean of the first / last {window} steps: "
        + ", ".join(f"{s} {sum(c[:window]) / window:.3f} -> {sum(c[-window:]) / window:.3f}" for s, c in curves.items())
    )
    return curves


if __name__ == "__main__":
    main()
