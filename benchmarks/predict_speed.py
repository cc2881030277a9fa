"""Time end-to-end ``ghninit.initialize`` (trace + graph + predict + write) per model on CPU.

Median of ``--repeats`` runs after one warm-up, with the per-stage breakdown from the report.
The reference implementation (facebookresearch/ppuda) is not installable here, so its column is
the ``reference_predict_seconds`` recorded in the parity fixtures by the machine that made them,
where a fixture exists; it is labelled as such. ``--recipe`` builds a GHN-3 from a fixture recipe
(the L configuration is shipped only that way); the peak resident memory of the process is reported.

    python benchmarks/predict_speed.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
    python benchmarks/predict_speed.py --ghn ../shared/fixtures/ghn3_reference/ghn3tm8_random.safetensors \
        --models resnet50 convnext_tiny vit_b_16 swin_t --out benchmarks/predict_speed_ghn3t
"""

from __future__ import annotations

import argparse
import json
import resource
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
SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
FIXTURES = SHARED_FIXTURES / "ghn2_reference"


def reference_fixture(name: str, ghn, ghn_name: str) -> Path:
    """The parity fixture recording the reference's time for this model and GHN."""
    if isinstance(ghn, ghninit.GHN3):
        return SHARED_FIXTURES / "ghn3_reference" / f"{ghn_name}__{name}.json"
    return FIXTURES / f"imagenet__{name}.json"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_model(
    name: str, ghn: ghninit.GHN2 | ghninit.GHN3, repeats: int, ghn_name: str = "", postprocess: str | None = None
) -> dict:
    model = torchvision.models.get_model(name)
    ghninit.initialize(model, ghn=ghn, postprocess=postprocess)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = ghninit.initialize(model, ghn=ghn, postprocess=postprocess)
        runs.append((time.perf_counter() - start, report.seconds))
    runs.sort(key=lambda r: r[0])
    total, stages = runs[len(runs) // 2]
    ref = reference_fixture(name, ghn, ghn_name)
    reference = json.loads(ref.read_text())["reference_predict_seconds"] if ref.exists() else None
    return {
        "model": name,
        "nodes": report.n_nodes,
        "seconds": statistics.median(r[0] for r in runs),
        "graph": stages["graph"],
        "predict": stages["predict"],
        "write": stages["write"],
        "postprocess": stages.get("postprocess", 0.0),
        "reference_fixture_seconds": reference,
        "peak_rss_mib": peak_rss_mib(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ghn", help="GHN to use: name, Hub repo, folder or file (an ImageNet GHN)")
    source.add_argument("--recipe", type=Path, help="a GHN-3 fixture recipe (*.recipe.json) to regenerate weights from")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="torchvision model names")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--postprocess", help="time initialize(..., postprocess=NAME), e.g. orth (default: none)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/predict_speed"), help="output prefix (.json, .md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recipe:
        from ghninit.zoo.ghn3_weights import ghn3_from_state_dict, state_dict_from_recipe

        recipe = json.loads(args.recipe.read_text())
        ghn, ghn_name = ghn3_from_state_dict(state_dict_from_recipe(recipe), recipe["config"]).eval(), recipe["name"]
    else:
        ghn, ghn_name = ghninit.load_ghn(args.ghn), Path(args.ghn).stem
    loaded_rss = peak_rss_mib()
    rows = [time_model(name, ghn, args.repeats, ghn_name, args.postprocess) for name in tqdm(args.models, desc="models")]
    lines = [
        f"GHN: {ghn_name} ({type(ghn).__name__}, {sum(p.numel() for p in ghn.parameters()):,} parameters); "
        f"CPU threads: {torch.get_num_threads()}, median of {args.repeats} after warm-up; "
        f"postprocess={args.postprocess!r}; "
        f"peak RSS after loading the GHN {loaded_rss:.0f} MiB\n",
        "| model | nodes | initialize (s) | graph (s) | predict (s) | post-processing (s) | write (s) | peak RSS so far (MiB) "
        "| reference predict, from fixture (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = f"{r['reference_fixture_seconds']:.3f}" if r["reference_fixture_seconds"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['nodes']} | {r['seconds']:.3f} | {r['graph']:.3f} | {r['predict']:.3f} | {r['postprocess']:.3f} "
            f"| {r['write']:.3f} | {r['peak_rss_mib']:.0f} | {ref} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
