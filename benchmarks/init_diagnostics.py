"""Compare He and GHN initialisations of a fine-tuning architecture before any training step.

    python benchmarks/init_diagnostics.py --data-dir ../shared/data/cifar10-jpeg --arch vit --ghn cifar10-mini

Builds the architecture as ``finetune_cifar10.py`` does (32x32 inputs, 10 classes, same seed for
both), initialises it with He and with the GHN, and on one batch of CIFAR-10 test images (train
mode) prints: the loss, top-1 and logit std; the std of each top-level block's output; and the
gradient norm of the whole network and of its first parameters. It explains *how* two starts
differ, e.g. a start whose early layers get much smaller gradients learns more slowly under SGD.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_common import CIFAR_ARCHS, build_classifier, initialise, resolve_ghn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ghninit.data import load_cifar10  # noqa: E402


def block_outputs(model: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks recording the output of every module two levels deep (``encoder.layers.encoder_layer_0``...)."""
    outputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args, out):
            outputs[name] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 2]
    leaves = [n for n in names if not any(m.startswith(n + ".") for m in names)]
    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in leaves]
    return outputs, handles


def diagnose(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss, top-1, logit std, per-block output std and gradient norms on one batch, in train mode."""
    outputs, handles = block_outputs(model)
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    return {
        "loss": loss.item(),
        "top1": 100.0 * (logits.argmax(1) == labels).float().mean().item(),
        "logit_std": logits.std().item(),
        "blocks": {n: o.float().std().item() for n, o in outputs.items()},
        "grad_total": sum(v * v for v in grads.values()) ** 0.5,
        "grads": grads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 folder (ImageFolder or torchvision)")
    parser.add_argument("--arch", default="vit", choices=CIFAR_ARCHS, help="architecture (default: vit)")
    parser.add_argument("--ghn", default="cifar10-mini", help="GHN name or path (default: cifar10-mini)")
    parser.add_argument("--images", type=int, default=256, help="test images in the batch (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's construction (default: 0)")
    parser.add_argument("--first", type=int, default=4, help="parameters whose gradient norm to list (default: 4)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    images, labels = next(load_cifar10(args.data_dir, False).subset(args.images).batches(args.images))
    ghn, _ = resolve_ghn(args.ghn)
    results = {}
    for init in ("he", "ghn"):
        torch.manual_seed(args.seed)
        model = build_classifier(args.arch, 10, cifar=True)
        initialise(model, init, ghn)
        results[init] = diagnose(model, images, labels)

    he, gh = results["he"], results["ghn"]
    print(f"{args.arch}, {len(labels)} CIFAR-10 test images, train mode; He vs GHN {args.ghn}\n")
    print("| quantity | He | GHN | GHN / He |\n|---|---:|---:|---:|")
    for key in ("loss", "top1", "logit_std", "grad_total"):
        print(f"| {key} | {he[key]:.3f} | {gh[key]:.3f} | {gh[key] / he[key]:.2f} |")
    for name in he["blocks"]:
        print(
            f"| output std: {name} | {he['blocks'][name]:.3f} | {gh['blocks'][name]:.3f} | "
            f"{gh['blocks'][name] / he['blocks'][name]:.2f} |"
        )
    for name in list(he["grads"])[: args.first]:
        print(
            f"| grad norm: {name} | {he['grads'][name]:.3f} | {gh['grads'][name]:.3f} | "
            f"{gh['grads'][name] / he['grads'][name]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
