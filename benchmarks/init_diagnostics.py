"""Compare initialisations of a fine-tuning architecture before any training step.

    python benchmarks/init_diagnostics.py --data-dir ../shared/data/cifar10-jpeg --arch vit --ghn cifar10-mini

Builds the architecture as ``finetune_cifar10.py`` does (32x32 inputs, 10 classes, same seed for
every start), initialises it each way asked for with ``--starts``, and on one batch of CIFAR-10
test images (train mode) prints one column per start: the loss, top-1 and logit std; the whole
network's gradient norm; per top-level block, the std of its output and the norm of the gradient
of its parameters; the predicted LayerNorm weights; and the class token and positional embedding
(values and gradients). It explains *how* two starts differ, e.g. a start whose early layers get
much smaller gradients learns more slowly under SGD.

Starts: ``he``, ``ghn``, and ``ghn+<post-processing>`` / ``he+<post-processing>`` for a GHN or He
start post-processed by ``ghninit.write.postprocess``, where ``<post-processing>`` is a preset (``orth``,
the recipe of Knyazev, arXiv 2207.10049 and the default; ``orth-he``) or :class:`ghninit.Orthogonalize`
fields by name over the defaults (``ghn+scale=he``, ``ghn+orthogonal=0,scale=he``,
``ghn+classifier_scale=he`` ...). ``he+orth`` is random orthogonal initialisation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune.init import he_init_, initialise, resolve_ghn  # noqa: E402
from finetune.models import CIFAR_ARCHS, build_classifier  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import ghninit  # noqa: E402
from ghninit.training.data import load_cifar10  # noqa: E402
from ghninit.write.postprocess import PRESETS, Orthogonalize  # noqa: E402

DEFAULT_STARTS = ("he", "ghn", "he+orth", "ghn+orth", "he+orth-he", "ghn+orth-he")


def parse_postprocess(text: str) -> Orthogonalize:
    """``orth`` / ``orth-he`` (presets) or ``field=value,...`` over :class:`Orthogonalize`'s defaults."""
    if text in PRESETS:
        return PRESETS[text]
    fields = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in Orthogonalize.__dataclass_fields__ or not value:
            raise ValueError(f"post-processing {text!r}: expected a preset {sorted(PRESETS)} or field=value pairs")
        cast = {"str": str, "int": int, "float": float, "bool": lambda v: v.lower() not in ("0", "false")}
        kind = str(Orthogonalize.__dataclass_fields__[key].type)
        fields[key] = None if value == "none" else cast.get(kind, str)(value)
    return Orthogonalize(**fields)


def make_start(arch: str, start: str, ghn: ghninit.GHN2 | None, seed: int) -> nn.Module:
    """``arch`` built with ``seed`` and initialised as ``start`` says."""
    torch.manual_seed(seed)
    model = build_classifier(arch, 10, cifar=True)
    if start in ("he", "ghn"):
        initialise(model, start, ghn)
    elif start.startswith("ghn+"):
        initialise(model, "ghn-orth", ghn, parse_postprocess(start[4:]))
    elif start.startswith("he+"):
        he_init_(model)
        ghninit.write.postprocess.apply_(model, parse_postprocess(start[3:]))
    else:
        raise ValueError(f"unknown start {start!r}: he, ghn, ghn+<post-processing> or he+<post-processing>")
    return model


def blocks_of(model: nn.Module) -> list[str]:
    """Modules two levels deep with no such module under them (``encoder.layers.encoder_layer_0``...)."""
    names = [n for n, _ in model.named_modules() if n and n.count(".") <= 2]
    return [n for n in names if not any(m.startswith(n + ".") for m in names)]


def diagnose(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss, top-1, logit std, per-block output std and gradient norm, LayerNorm weights and token
    parameters on one batch, in train mode."""
    outputs: dict[str, torch.Tensor] = {}

    def record(name: str):
        def hook(module, args, out):
            outputs[name] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    blocks = blocks_of(model)
    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in blocks]
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}
    block_grads = {
        b: sum(v * v for n, v in grads.items() if n.startswith(b + ".")) ** 0.5 for b in blocks
    }
    norms = {
        n: (m.weight.mean().item(), m.weight.std().item())
        for n, m in model.named_modules()
        if isinstance(m, nn.LayerNorm) and m.weight is not None
    }
    tokens = {
        n: {"std": p.std().item() if p.numel() > 1 else p.abs().item(), "grad": grads.get(n, 0.0)}
        for n, p in model.named_parameters()
        if n in ("class_token", "encoder.pos_embedding")
    }
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {
        "classifier_weight_norm": linears[-1].weight.norm().item() if linears else float("nan"),
        "loss": loss.item(),
        "top1": 100.0 * (logits.argmax(1) == labels).float().mean().item(),
        "logit_std": logits.std().item(),
        "grad_total": sum(v * v for v in grads.values()) ** 0.5,
        "output_std": {n: o.float().std().item() for n, o in outputs.items()},
        "block_grad": block_grads,
        "layernorm_weight": norms,
        "tokens": tokens,
    }


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per quantity, one column per start."""
    starts = list(results)
    first = results[starts[0]]
    lines = ["| quantity | " + " | ".join(starts) + " |", "|---|" + "---:|" * len(starts)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(get(results[s]) for s in starts) + " |")

    for key in ("loss", "top1", "logit_std", "grad_total", "classifier_weight_norm"):
        row(key, lambda r, key=key: f"{r[key]:.3f}")
    for name in first["output_std"]:
        row(f"output std: {name}", lambda r, name=name: f"{r['output_std'][name]:.3f}")
    for name in first["block_grad"]:
        row(f"grad norm: {name}", lambda r, name=name: f"{r['block_grad'][name]:.3f}")
    for name in first["tokens"]:
        row(f"{name}: std / grad norm", lambda r, name=name: f"{r['tokens'][name]['std']:.3f} / {r['tokens'][name]['grad']:.3f}")
    for name in first["layernorm_weight"]:
        row(f"LayerNorm weight mean±std: {name}", lambda r, name=name: "{:.2f}±{:.2f}".format(*r["layernorm_weight"][name]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 folder (ImageFolder or torchvision)")
    parser.add_argument("--arch", default="vit", choices=CIFAR_ARCHS, help="architecture (default: vit)")
    parser.add_argument("--ghn", default="cifar10-mini", help="GHN name or path (default: cifar10-mini)")
    parser.add_argument(
        "--starts", nargs="+", default=list(DEFAULT_STARTS), help=f"starts to compare (default: {' '.join(DEFAULT_STARTS)})"
    )
    parser.add_argument("--images", type=int, default=256, help="test images in the batch (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's construction (default: 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    data = load_cifar10(args.data_dir, False).subset(args.images)
    images, labels = next(data.batches(args.images))
    ghn = resolve_ghn(args.ghn)[0] if any(s.startswith("ghn") for s in args.starts) else None
    results = {start: diagnose(make_start(args.arch, start, ghn, args.seed), images, labels) for start in args.starts}
    print(f"{args.arch}, {len(labels)} CIFAR-10 test images, train mode, seed {args.seed}; GHN {args.ghn}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
