"""Time end-to-end ``ghninit.initialize`` (trace + graph + predict + write) per model on CPU.

Median of ``--repeats`` runs after one warm-up, with the per-stage breakdown from the report.
The reference implementation (facebookresearch/ppuda) is not installable here, so its column is
the ``reference_predict_seconds`` recorded in the parity fixtures by the machine that made them,
where a fixture exists; it is labelled as such.

    python benchmarks/predict_speed.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

DEFAULT_MODELS = ["resnet18", "resnet50", "convnext_tiny", "densenet121", "mobilenet_v2", "googlenet", "vgg11_bn"]
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ghn2_reference"


def time_model(name: str, ghn: ghninit.GHN2, repeats: int) -> dict:
    model = torchvision.models.get_model(name)
    ghninit.initialize(model, ghn=ghn)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = ghninit.initialize(model, ghn=ghn)
        runs.append((time.perf_counter() - start, report.seconds))
    runs.sort(key=lambda r: r[0])
    total, stages = runs[len(runs) // 2]
    ref = FIXTURES / f"imagenet__{name}.json"
    reference = json.loads(ref.read_text())["reference_predict_seconds"] if ref.exists() else None
    return {
        "model": name,
        "nodes": report.n_nodes,
        "seconds": statistics.median(r[0] for r in runs),
        "graph": stages["graph"],
        "predict": stages["predict"],
        "write": stages["write"],
        "reference_fixture_seconds": reference,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN to use: name, Hub repo, folder or file (an ImageNet GHN-2)")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="torchvision model names")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/predict_speed"), help="output prefix (.json, .md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ghn = ghninit.load_ghn(args.ghn)
    rows = [time_model(name, ghn, args.repeats) for name in tqdm(args.models, desc="models")]
    lines = [
        f"CPU threads: {torch.get_num_threads()}, median of {args.repeats} after warm-up\n",
        "| model | nodes | initialize (s) | graph (s) | predict (s) | write (s) | reference predict, from fixture (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = f"{r['reference_fixture_seconds']:.3f}" if r["reference_fixture_seconds"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['seconds']:.3f} | {r['graph']:.3f} | {r['predict']:.3f} | {r['write']:.3f} | {ref} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
