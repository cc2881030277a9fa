"""Coverage of the models issue 20 is about: multi-output backbones, parametrized, lazy and video models.

For each model: graph nodes, how many outputs the graph joins, the share of parameters predicted,
whether ``initialize`` warned (under 50%), the seconds of one ``initialize`` call, whether a
forward pass afterwards is finite, and the largest family of parameters left to their own init.
Writes ``benchmarks/coverage_outputs.md`` and ``.json``; a model that fails is listed with its
error, and the script exits non-zero at the end.

    python benchmarks/coverage_outputs.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors

``--no-forward`` skips the forward passes (the video transformers run 16 frames of 224x224).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torch.nn.utils import parametrizations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

REPO_DIR = Path(__file__).resolve().parents[1]

TIMM_FEATURES = [
    "resnet50", "resnext50_32x4d", "convnext_tiny", "efficientnet_b0", "swin_tiny_patch4_window7_224",
    "regnety_016", "mobilenetv3_large_100", "densenet121", "dla34", "cspresnet50", "hrnet_w18_small",
    "ghostnet_100", "rexnet_100", "res2net50_26w_4s", "mobilevit_s", "efficientvit_b1", "repvgg_a2",
    "xception41", "inception_v3", "dpn68", "mixnet_s", "vgg16",
]  # fmt: skip

EXTRACTORS = {
    "resnet50": {"layer2": "f2", "layer4": "f4"},
    "mobilenet_v3_large": {"features.6": "c3", "features.12": "c4", "features.16": "c5"},
    "convnext_tiny": {"features.3": "c3", "features.5": "c4", "features.7": "c5"},
    "efficientnet_b0": {"features.3": "c3", "features.5": "c4", "features.8": "c5"},
    "regnet_y_400mf": {"trunk_output.block2": "c3", "trunk_output.block4": "c5"},
}

VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b", "mvit_v2_s", "swin3d_t"]


class TwoHeads(nn.Module):
    """A ResNet-18 trunk with a classification head and a 1x1-conv box head."""

    def __init__(self):
        super().__init__()
        trunk = torchvision.models.resnet18()
        self.body = nn.Sequential(*list(trunk.children())[:-2])
        self.cls_head = nn.Linear(512, 1000)
        self.box_head = nn.Conv2d(512, 4, 1)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.cls_head(f.mean((2, 3))), "boxes": self.box_head(f)}


def _weight_norm_resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            parametrizations.weight_norm(module)
    return model


def _spectral_norm_resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    parametrizations.spectral_norm(model.fc)
    return model


def _orthogonal_resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    parametrizations.orthogonal(model.fc)
    return model


def _lazy_resnet18() -> nn.Module:
    model = torchvision.models.resnet18()
    model.fc = nn.LazyLinear(1000)
    return model


def _lazy_cnn() -> nn.Module:
    return nn.Sequential(
        nn.LazyConv2d(32, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.LazyConv2d(64, 3, stride=2), nn.LazyBatchNorm2d(), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LazyLinear(1000),
    )  # fmt: skip


def _video_input(name: str) -> torch.Tensor:
    if name in ("s3d", "mvit_v1_b", "mvit_v2_s"):
        return torch.randn(1, 3, 16, 224, 224)  # S3D's last pool and MViT's position embeddings need this size
    return torch.randn(1, 3, 8, 112, 112)


def cases() -> list[tuple[str, str, object, torch.Tensor | None]]:
    """(section, model name, builder, forward input or None)."""
    import timm
    from torchvision.models.feature_extraction import create_feature_extractor

    image = torch.randn(1, 3, 224, 224)
    rows: list[tuple[str, str, object, torch.Tensor | None]] = []
    for name in TIMM_FEATURES:
        rows.append(("timm features_only", name, lambda n=name: timm.create_model(n, features_only=True), image))
    for name, nodes in EXTRACTORS.items():
        build = lambda n=name, s=nodes: create_feature_extractor(getattr(torchvision.models, n)(), s)  # noqa: E731
        rows.append(("torchvision create_feature_extractor", f"{name} {sorted(nodes)}", build, image))
    rows.append(("two heads", "resnet18 trunk + class head + box head", TwoHeads, image))
    rows.append(("parametrized", "resnet18, weight_norm on every conv", _weight_norm_resnet18, image))
    rows.append(("parametrized", "resnet18, spectral_norm on fc", _spectral_norm_resnet18, image))
    rows.append(("parametrized", "resnet18, orthogonal on fc", _orthogonal_resnet18, image))
    rows.append(("lazy", "resnet18 with a LazyLinear fc", _lazy_resnet18, image))
    rows.append(("lazy", "LazyConv2d/LazyBatchNorm2d/LazyLinear CNN", _lazy_cnn, image))
    for name in VIDEO:
        rows.append(("video", name, lambda n=name: getattr(torchvision.models.video, n)(), _video_input(name)))
    return rows


def measure(section: str, name: str, build, ghn, example: torch.Tensor | None) -> dict:
    row = {"section": section, "model": name}
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = ghninit.initialize(model, ghn=ghn)
        seconds = time.perf_counter() - start
        warned = any("ghninit.initialize: only" in str(w.message) for w in caught)
        finite = None
        if example is not None:
            with torch.no_grad():
                out = model.eval()(example)
            leaves = out.values() if isinstance(out, dict) else out if isinstance(out, list | tuple) else [out]
            finite = all(bool(torch.isfinite(t).all()) for t in leaves)
        family = report.skipped_families[0] if report.skipped_families else None
        row.update(
            nodes=report.n_nodes,
            outputs=report.n_outputs,
            percent_predicted=100 * report.fraction_predicted,
            warned=warned,
            seconds=seconds,
            finite_forward=finite,
            inflated=len(report.inflated),
            parametrized=len(report.parametrized),
            largest_skipped=f"{family[0]}: {family[1]} ({family[2]:,})" if family else "",
            error=None,
        )
    except Exception as err:  # the table reports failures instead of stopping
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return row


def _portable(ghn: str) -> str:
    path = Path(ghn)
    return Path(os.path.relpath(os.path.abspath(path), REPO_DIR)).as_posix() if path.exists() else ghn


def write_markdown(rows: list[dict], path: Path, command: str, forward: bool) -> None:
    lines = [
        "# Coverage: multi-output, parametrized, lazy and video models",
        "",
        f"Made by `{command}` (torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{torch.get_num_threads()} CPU threads). Seconds are one `initialize` call without warm-up on a "
        "shared, loaded 2-core machine: preliminary. 'warned': `initialize` warned that under 50% was predicted. "
        + ("'finite': a forward pass after initialisation gives finite outputs." if forward else "No forward passes."),
        "",
    ]
    for section in dict.fromkeys(r["section"] for r in rows):
        part = [r for r in rows if r["section"] == section]
        ok = [r for r in part if r["error"] is None]
        good = sum(r["percent_predicted"] >= 90 for r in ok)
        lines += [
            f"## {section}: {good}/{len(part)} at >= 90% predicted",
            "",
            "| model | nodes | outputs | % predicted | warned | finite | seconds | largest family kept as it was |",
            "|---|---:|---:|---:|---|---|---:|---|",
        ]
        for r in part:
            if r["error"]:
                lines.append(f"| {r['model']} | | | | | | | FAILED: {r['error']} |")
                continue
            finite = "" if r["finite_forward"] is None else ("yes" if r["finite_forward"] else "NO")
            lines.append(
                f"| {r['model']} | {r['nodes']} | {r['outputs']} | {r['percent_predicted']:.2f} | "
                f"{'yes' if r['warned'] else ''} | {finite} | {r['seconds']:.2f} | {r['largest_skipped']} |"
            )
        lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ghn", default=str(REPO_DIR.parent / "shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors")
    )
    parser.add_argument("--out", default=str(REPO_DIR / "benchmarks" / "coverage_outputs"))
    parser.add_argument("--no-forward", action="store_true", help="skip the forward passes")
    parser.add_argument("--only", nargs="*", help="run only models whose name contains one of these")
    args = parser.parse_args()
    ghn = ghninit.load_ghn(args.ghn)
    rows = []
    for section, name, build, example in cases():
        if args.only and not any(o in name for o in args.only):
            continue
        row = measure(section, name, build, ghn, None if args.no_forward else example)
        rows.append(row)
        shown = row["error"] or f"{row['percent_predicted']:.1f}% in {row['seconds']:.2f}s"
        print(f"[{section}] {name}: {shown}", flush=True)
    command = f"python benchmarks/coverage_outputs.py --ghn {_portable(args.ghn)}" + (
        " --no-forward" if args.no_forward else ""
    )
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    write_markdown(rows, out.with_suffix(".md"), command, not args.no_forward)
    failed = [r for r in rows if r["error"] or r.get("finite_forward") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
