"""Time the paths around ``initialize``'s core, as ratios to plain ``initialize`` on the same model.

Three measurements, one process, each model built once with random weights, one warm-up call and
then the median of ``--repeat`` calls (CUDA synchronised before each clock read):

- post-processing: ``initialize(m, postprocess="orth")`` / ``initialize(m)`` for ResNet-50, ViT-B/16
  and ConvNeXt-T (torchvision);
- example-input tracing: ``initialize(m, example_inputs=x)`` / ``initialize(m)`` for ResNet-50 and
  ViT-B/16, ``x`` a (1, 3, 224, 224) batch on the model's device;
- graph size: MLP chains of 52, 202, 802 and 2,002 Linear+ReLU blocks (105 to 4,005 graph nodes),
  seconds per graph node, and the ratio of per-node time at ~4,000 nodes to that at ~400.

Writes ``--out``.md and .json (default ``benchmarks/path_speed``).

    python benchmarks/path_speed.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
    python benchmarks/path_speed.py --ghn ... --device cuda --out benchmarks/path_speed_cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

POSTPROCESS_MODELS = ("resnet50", "vit_b_16", "convnext_tiny")
EXAMPLE_INPUT_MODELS = ("resnet50", "vit_b_16")
CHAIN_BLOCKS = (52, 202, 802, 2002)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(call, repeat: int, device: torch.device) -> tuple[float, ghninit.Report]:
    """Median wall seconds of ``call()`` over ``repeat`` runs after one warm-up; and the last report."""
    report = call()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        report = call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), report


def chain(blocks: int) -> nn.Sequential:
    """``blocks`` Linear(8, 8)+ReLU pairs and a Linear(8, 10) head."""
    return nn.Sequential(*[m for _ in range(blocks) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 10))


SECTIONS = ("postprocess", "example_inputs", "chain")


def run(ghn, device: torch.device, repeat: int, sections: tuple[str, ...] = SECTIONS) -> dict:
    out: dict = {"postprocess": [], "example_inputs": [], "chain": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in POSTPROCESS_MODELS if "postprocess" in sections else ():
            model = getattr(torchvision.models, name)().to(device)
            plain, _ = median_seconds(partial(ghninit.initialize, model, ghn=ghn), repeat, device)
            orth, report = median_seconds(
                partial(ghninit.initialize, model, ghn=ghn, postprocess="orth"), repeat, device
            )
            out["postprocess"].append(
                {
                    "model": name,
                    "plain_s": plain,
                    "orth_s": orth,
                    "ratio": orth / plain,
                    "postprocess_stage_s": report.seconds.get("postprocess", 0.0),
                }
            )
            print(out["postprocess"][-1], flush=True)
        for name in EXAMPLE_INPUT_MODELS if "example_inputs" in sections else ():
            model = getattr(torchvision.models, name)().to(device)
            x = torch.randn(1, 3, 224, 224, device=device)
            plain, symbolic = median_seconds(partial(ghninit.initialize, model, ghn=ghn), repeat, device)
            example, report = median_seconds(
                partial(ghninit.initialize, model, ghn=ghn, example_inputs=x), repeat, device
            )
            out["example_inputs"].append(
                {
                    "model": name,
                    "symbolic_s": plain,
                    "example_s": example,
                    "ratio": example / plain,
                    "tracing": [symbolic.tracing, report.tracing],
                    "graph_stage_s": report.seconds.get("graph", 0.0),
                }
            )
            print(out["example_inputs"][-1], flush=True)
        for blocks in CHAIN_BLOCKS if "chain" in sections else ():
            model = chain(blocks).to(device)
            seconds, report = median_seconds(partial(ghninit.initialize, model, ghn=ghn), repeat, device)
            gc.disable()  # attribution only: ghninit never changes the process's GC settings itself
            try:
                no_gc, _ = median_seconds(partial(ghninit.initialize, model, ghn=ghn), repeat, device)
            finally:
                gc.enable()
            nodes = len(ghninit.build_graph(model).nodes)
            out["chain"].append(
                {
                    "blocks": blocks,
                    "nodes": nodes,
                    "seconds": seconds,
                    "ms_per_node": 1000 * seconds / nodes,
                    "ms_per_node_gc_off": 1000 * no_gc / nodes,
                    "stages": report.seconds,
                }
            )
            print(out["chain"][-1], flush=True)
    rows = {row["nodes"]: row for row in out["chain"]}
    if not rows:
        return out
    small = rows[min(rows, key=lambda n: abs(n - 400))]
    large = rows[min(rows, key=lambda n: abs(n - 4000))]
    out["chain_ratio"] = {
        "small_nodes": small["nodes"],
        "large_nodes": large["nodes"],
        "ratio": large["ms_per_node"] / small["ms_per_node"],
        "ratio_gc_off": large["ms_per_node_gc_off"] / small["ms_per_node_gc_off"],
    }
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Device {result['device']}, {result['threads']} torch thread(s), torch {result['torch']}, "
        f"median of {result['repeat']} after a warm-up.",
        "",
        "| path | model | plain `initialize` (s) | this path (s) | ratio | goal |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result["postprocess"]:
        lines.append(
            f'| `postprocess="orth"` | {row["model"]} | {row["plain_s"]:.3f} | {row["orth_s"]:.3f} | '
            f"{row['ratio']:.1f}x | <= 1.5x |"
        )
    for row in result["example_inputs"]:
        lines.append(
            f"| `example_inputs=x` | {row['model']} | {row['symbolic_s']:.3f} | {row['example_s']:.3f} | "
            f"{row['ratio']:.2f}x | <= 2x |"
        )
    lines += [
        "",
        "| MLP chain | graph nodes | `initialize` (s) | ms per node | ms per node, Python's GC off |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["chain"]:
        lines.append(
            f"| {row['blocks']} blocks | {row['nodes']:,} | {row['seconds']:.2f} | {row['ms_per_node']:.3f} "
            f"| {row['ms_per_node_gc_off']:.3f} |"
        )
    c = result.get("chain_ratio")
    lines += (
        []
        if c is None
        else [
            "",
            f"Per-node time at {c['large_nodes']:,} nodes / at {c['small_nodes']:,} nodes: "
            f"**{c['ratio']:.2f}x** (goal <= 1.5x); with Python's garbage collector off during the calls "
            f"{c['ratio_gc_off']:.2f}x.",
        ]
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN: name, Hub repo, folder or file (an ImageNet GHN)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (models and GHN there)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (default: 3)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="measure only these")
    parser.add_argument("--out", default="benchmarks/path_speed", help="output path without suffix")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ghn = ghninit.load_ghn(args.ghn).to(device)
    result = {
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "repeat": args.repeat,
        "machine": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    result.update(run(ghn, device, args.repeat, tuple(args.only)))
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
