"""Initialise every torchvision classification model and a list of popular timm models.

Writes a markdown table (model, graph nodes, % of parameters predicted, seconds) and a JSON file.
A model that fails is listed with its error, and the script exits non-zero at the end.

    python benchmarks/coverage.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
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
import torchvision
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

REPO_DIR = Path(__file__).resolve().parents[1]


def _portable(ghn: str) -> str:
    """``--ghn`` as written in the report: a path relative to the repository root (never machine-specific)."""
    path = Path(ghn)
    return Path(os.path.relpath(path.resolve(), REPO_DIR)).as_posix() if path.exists() else ghn

TIMM_MODELS = [
    "resnet18", "resnet50", "resnet101", "resnext50_32x4d", "seresnext50_32x4d", "wide_resnet50_2",
    "resnetv2_50", "efficientnet_b0", "efficientnet_b3", "tf_efficientnetv2_s", "mobilenetv3_large_100",
    "mobilenetv2_100", "mnasnet_100", "convnext_tiny", "convnext_small", "convnextv2_tiny", "vit_tiny_patch16_224",
    "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224", "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224", "regnetx_002", "regnety_016", "densenet121", "densenet169",
    "inception_v3", "xception41", "dla34", "dpn68", "ghostnet_100", "rexnet_100", "mixnet_s", "efficientformer_l1",
    "poolformer_s12", "levit_128", "cspresnet50", "hrnet_w18_small", "vgg16", "repvgg_a2", "res2net50_26w_4s",
    "mobilevit_s", "edgenext_small", "coat_lite_tiny", "maxvit_tiny_tf_224",
]  # fmt: skip


def measure(name: str, build, ghn: ghninit.GHN2) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(name)
        start = time.perf_counter()
        report = ghninit.initialize(model, ghn=ghn)
        seconds = time.perf_counter() - start
        return {
            "model": name,
            "nodes": report.n_nodes,
            "percent_predicted": 100 * report.fraction_predicted,
            "seconds": seconds,
            "error": None,
        }
    except Exception as err:  # the table reports failures instead of stopping
        return {"model": name, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}


def table(rows: list[dict]) -> str:
    lines = ["| model | nodes | % params predicted | seconds |", "|---|---:|---:|---:|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['model']} | - | FAILED: {r['error']} | - |")
        else:
            lines.append(f"| {r['model']} | {r['nodes']} | {r['percent_predicted']:.2f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN: name, Hub repo, folder or file")
    parser.add_argument("--source", choices=["torchvision", "timm", "all"], default="all")
    parser.add_argument("--models", nargs="*", help="only these model names")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/coverage.md"), help="markdown output")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ghn = ghninit.load_ghn(args.ghn)
    sections = []
    if args.source in ("torchvision", "all"):
        names = args.models or torchvision.models.list_models(module=torchvision.models)
        rows = [measure(n, torchvision.models.get_model, ghn) for n in tqdm(names, desc="torchvision")]
        sections.append(("torchvision", rows))
    if args.source in ("timm", "all"):
        import timm

        names = args.models or TIMM_MODELS
        rows = [measure(n, lambda n: timm.create_model(n, pretrained=False), ghn) for n in tqdm(names, desc="timm")]
        sections.append((f"timm {timm.__version__}", rows))
    text = [
        "# Coverage: models initialised by ghninit",
        "",
        f"Made by `python benchmarks/coverage.py --ghn {_portable(args.ghn)}` (torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, {torch.get_num_threads()} CPU threads). Seconds are one "
        "end-to-end `initialize` call without warm-up, on a shared 2-core machine; see predict_speed.md for timings.",
    ]
    failed = 0
    for title, rows in sections:
        ok = sum(r["error"] is None for r in rows)
        failed += len(rows) - ok
        text += ["", f"## {title}: {ok}/{len(rows)} initialised", "", table(rows)]
    args.out.write_text("\n".join(text) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(sections, indent=1))
    print("\n".join(text))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
