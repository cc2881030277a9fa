"""What happens in the first SGD steps from each start, and which parameters cause a blow-up.

    python benchmarks/first_steps.py --data-dir ../shared/data/cifar10-jpeg --out benchmarks/results/first_steps

Builds a model as ``benchmarks/recipes.py`` does (timm ResNet-18 or the small timm ViT, 32x32,
10 classes, seed 0), sets its start, then takes ``--steps`` steps of the recipe that blew up in
users' scripts (SGD lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4, no warmup) on the same
CIFAR-10 batches for every start. Per step it records the loss, the norm of the penultimate
features (the classifier's input), the standard deviation of the logits, and per parameter group
(convolution/linear weights, normalisation parameters, classifier) the weight norm, gradient norm
and relative update ``|w_t+1 - w_t| / |w_t|``.

Attribution starts take the GHN start and put one group back to the default start's values:
``ghn[classifier=default]``, ``ghn[norm=default]`` (every normalisation layer's weight and bias),
``ghn[weight-norms=default]`` (each conv/linear weight rescaled to the default start's norm, its
direction kept; under BatchNorm this leaves the function unchanged and only changes the step
size). A group whose reset removes the blow-up is where it comes from. ``ghn[output-std=default]``
is a data-aware calibration in the spirit of LSUV (Mishkin & Matas, 2016): layer by layer in
module order, each conv/linear/normalisation layer's weight and bias are scaled so that its
output's standard deviation on the first batch equals the default start's, keeping the predicted
directions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune.recipes import RECIPES, make_optimizer  # noqa: E402
from finetune.starts import NORMS, classifier_of, make_start  # noqa: E402

GROUPS = ("weights", "norm", "classifier")


def groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by group: conv/linear weights (not the classifier), normalisation parameters, classifier."""
    head = classifier_of(model)
    out: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for m in model.modules():
        if m is head:
            out["classifier"] += list(m.parameters(recurse=False))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out["weights"].append(m.weight)
        elif isinstance(m, NORMS):
            out["norm"] += list(m.parameters(recurse=False))
    return out


def _norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.detach().float() ** 2).sum() for t in tensors))) if tensors else 0.0


def first_steps(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], recipe: str) -> list[dict[str, Any]]:
    """Run one step per batch; per step the loss, features, logits and per-group statistics."""
    opt, sched = make_optimizer(model, RECIPES[recipe], steps_per_epoch=len(batches), epochs=100)
    head = classifier_of(model)
    feats: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda m, i, o: feats.__setitem__("x", i[0].detach()))
    rows = []
    model.train()
    for x, y in batches:
        by_group = groups(model)
        before = {g: [p.detach().clone() for p in ps] for g, ps in by_group.items()}
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        row: dict[str, Any] = {
            "loss": loss.item(),
            "feature_norm": feats["x"].flatten(1).norm(dim=1).mean().item(),
            "logit_std": logits.detach().std().item(),
        }
        grads = {g: [p.grad for p in ps if p.grad is not None] for g, ps in by_group.items()}
        opt.step()
        sched.step()
        for g, ps in by_group.items():
            w = _norm(before[g])
            row[g] = {
                "weight_norm": w,
                "grad_norm": _norm(grads[g]),
                "relative_update": _norm([p.detach() - b for p, b in zip(ps, before[g])]) / max(w, 1e-12),
            }
        rows.append(row)
    hook.remove()
    return rows


def markdown(results: dict[str, dict[str, list[dict[str, Any]]]], show: int = 8) -> str:
    lines = []
    for arch, by_start in results.items():
        lines += [
            f"### {arch}",
            "",
            "| start | loss at steps 0.." + str(show - 1) + " | largest | feature norm, step 0 | logit std, step 0 | "
            "relative update at step 0: weights / norm / classifier |",
            "|---|---|---:|---:|---:|---|",
        ]
        for start, rows in by_start.items():
            losses = " ".join(f"{r['loss']:.2f}" for r in rows[:show])
            upd = " / ".join(f"{rows[0][g]['relative_update']:.4f}" for g in GROUPS)
            lines.append(
                f"| {start} | {losses} | {max(r['loss'] for r in rows):.2f} | {rows[0]['feature_norm']:.2f} | "
                f"{rows[0]['logit_std']:.3f} | {upd} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (ImageFolder copy or torchvision's folder)")
    parser.add_argument("--out", help="folder for first_steps.json and README.md")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "vit"])
    parser.add_argument("--starts", nargs="+", default=[
        "default", "ghn", "ghn+orth", "ghn[classifier=default]", "ghn[norm=default]", "ghn[weight-norms=default]",
        "ghn[output-std=default]"])
    parser.add_argument("--recipe", default="sgd-0.05", choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ghn", default="cifar10-mini")
    args = parser.parse_args(argv)

    from finetune.data import augment

    import ghninit
    from ghninit.training.data import load_cifar10

    torch.set_num_threads(1)
    data = load_cifar10(args.data_dir, train=True)
    gen = torch.Generator().manual_seed(0)
    batches = [
        (data.normalize(augment(data.images[i * 128 : (i + 1) * 128], gen)), data.labels[i * 128 : (i + 1) * 128])
        for i in range(args.steps)
    ]
    ghn = ghninit.load_ghn(args.ghn)
    results = {
        arch: {s: first_steps(make_start(arch, s, ghn, 0, batches[0][0])[0], batches, args.recipe) for s in args.starts}
        for arch in args.archs
    }
    text = f"Recipe `{args.recipe}`, {args.steps} steps of 128 CIFAR-10 training images, seed 0, GHN `{args.ghn}`.\n\n"
    text += markdown(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "first_steps.json").write_text(json.dumps(results, indent=1))
        command = "python benchmarks/first_steps.py " + " ".join(sys.argv[1:] if argv is None else argv)
        (out / "README.md").write_text(f"# First steps from each start\n\n`{command}`\n\n" + text)


if __name__ == "__main__":
    main()
