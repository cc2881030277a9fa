"""Drop-in for a timm training loop: one call to ghninit.initialize, then your usual loop.

Trains a timm model for a few steps on an ImageFolder (e.g. ../shared/data/cifar10-jpeg/train)
or, without --data-dir, on torchvision's FakeData, so it runs anywhere in under a minute.

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


def make_loader(data_dir: Path | None, image_size: int, batch_size: int, num_classes: int) -> DataLoader:
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()])
    if data_dir is None:
        data = datasets.FakeData(256, (3, image_size, image_size), num_classes, transform=tf)
    else:
        data = datasets.ImageFolder(str(data_dir), transform=tf)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ghn", default="cifar10-mini", help="GHN: shipped or known name, Hub repo id, folder or .safetensors file"
    )
    parser.add_argument("--model", default="resnet18", help="timm model name")
    parser.add_argument("--data-dir", type=Path, default=None, help="ImageFolder root (default: FakeData)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=args.num_classes)
    print(ghninit.initialize(model, ghn=args.ghn))  # <- the only new line

    # The usual loop, unchanged.
    loader = make_loader(args.data_dir, args.image_size, args.batch_size, args.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    step = 0
    while step < args.steps:
        for images, labels in loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 5 == 0 or step == 1:
                print(f"step {step:3d}  loss {loss.item():.3f}")
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
