"""Quickstart: initialise a torchvision model with GHN-2 and check it runs.

python examples/quickstart_torchvision.py --ghn imagenet --model resnet50
python examples/quickstart_torchvision.py --ghn path/to/ghn.safetensors --model mobilenet_v2
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import ghninit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", default="imagenet", help="GHN name, Hub repo id, folder or .safetensors file")
    parser.add_argument("--model", default="resnet50", help="any torchvision classification model name")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of the model to build")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, num_classes=args.num_classes)
    report = ghninit.initialize(model, ghn=args.ghn)
    print(report)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 224, 224))
    print(f"forward pass OK: logits {tuple(logits.shape)}, std {logits.std():.3f}")


if __name__ == "__main__":
    main()
