"""Time ``initialize`` through the example-input path against comparable models traced symbolically.

Pairs: torchvision's ``fasterrcnn_resnet50_fpn`` (example input) against ``resnet50`` (symbolic), and
Hugging Face ``ViTForImageClassification`` from its default config (ViT-B/16, example input) against
torchvision's ``vit_b_16`` (symbolic). Each model is built once with random weights; ``initialize``
runs once to warm up, then ``--repeat`` times; the table gives the median of each stage (graph,
predict, write, total) and the ratio of totals within each pair. Writes
``benchmarks/tracing_speed.md`` and ``.json``.

    python benchmarks/tracing_speed.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402


def _hf_vit():
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig())


MODELS = {
    "resnet50 (torchvision)": lambda: torchvision.models.resnet50(),
    "fasterrcnn_resnet50_fpn (torchvision)": lambda: torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    ),
    "vit_b_16 (torchvision)": lambda: torchvision.models.vit_b_16(),
    "ViT-B/16 (transformers ViTForImageClassification)": _hf_vit,
}
PAIRS = [
    ("fasterrcnn_resnet50_fpn (torchvision)", "resnet50 (torchvision)"),
    ("ViT-B/16 (transformers ViTForImageClassification)", "vit_b_16 (torchvision)"),
]


def measure(build, ghn, repeat: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
        report = ghninit.initialize(model, ghn=ghn)  # warm-up
        runs = [ghninit.initialize(model, ghn=ghn).seconds for _ in range(repeat)]
    stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "tracing": report.tracing,
        "params_m": report.n_params_total / 1e6,
        "percent_predicted": 100 * report.fraction_predicted,
        "seconds": stages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN: name, Hub repo, folder or file")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracing_speed.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ghn = ghninit.load_ghn(args.ghn)
    rows = {name: measure(build, ghn, args.repeat) for name, build in MODELS.items()}
    command = "python benchmarks/tracing_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# initialize: example-input tracing against symbolic tracing",
        "",
        f"Made by `{command}` (torch {torch.__version__}, {torch.get_num_threads()} CPU threads): median of "
        f"{args.repeat} calls after one warm-up, seconds per stage.",
        "",
        "| model | tracing | params (M) | % predicted | graph | predict | write | total |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        s = r["seconds"]
        lines.append(
            f"| {name} | {r['tracing']} | {r['params_m']:.1f} | {r['percent_predicted']:.1f} | {s['graph']:.2f} | "
            f"{s['predict']:.2f} | {s['write']:.2f} | {s['total']:.2f} |"
        )
    lines += ["", "| pair | ratio of total times |", "|---|---:|"]
    for new, ref in PAIRS:
        ratio = rows[new]["seconds"]["total"] / rows[ref]["seconds"]["total"]
        lines.append(f"| {new} / {ref} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
