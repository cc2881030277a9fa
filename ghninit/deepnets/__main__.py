"""Command line for the DeepNets-1M generator.

python -m ghninit.deepnets stats --split test -n 500     # Table 1 statistics of a sample
python -m ghninit.deepnets show --split train -i 0 3     # describe architectures 0..2
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..graph.build import build_graph
from .generator import SPLITS, describe, generate

# What the paper (Table 1, appendix A.2) and the reference generator fix for each split; "-" where
# the rules leave it free. Channels are those of the first cell (C).
PAPER = {
    "train": {"cells": "4-18", "channels": "16-128", "no_bn": "rare (shallow nets only)"},
    "val": {"cells": "4-18", "channels": "32", "no_bn": "rare (shallow nets only)"},
    "test": {"cells": "4-18", "channels": "32", "no_bn": "rare (shallow nets only)"},
    "wide": {"cells": "4-18", "channels": "wider (128 on CIFAR-10)", "no_bn": "as TEST"},
    "deep": {"cells": "10-36", "channels": "32", "no_bn": "rare"},
    "dense": {"cells": "4-18", "channels": "32", "no_bn": "rare"},
    "bnfree": {"cells": "4-18", "channels": "32", "no_bn": "100%"},
}


@dataclass
class Sample:
    cells: int
    steps: int
    channels: int
    nodes: int
    params_m: float
    has_bn: bool
    vit: bool
    cse: bool
    vgg_head: bool


def _collect(split: str, n: int, start: int, nodes: bool) -> list[Sample]:
    out = []
    for i in tqdm(range(start, start + n), desc=f"{split} architectures", leave=False):
        spec = generate(split, i)
        n_nodes = len(build_graph(spec.build(10, 32), virtual_edge_cutoff=1)) if nodes else 0
        params = (
            spec.params_cifar10
            if split != "wide"
            else sum(p.numel() for p in spec.build(10, 32, device="meta").parameters())
        )
        out.append(
            Sample(
                cells=spec.n_cells,
                steps=spec.genotype.steps,
                channels=spec.channels,
                nodes=n_nodes,
                params_m=params / 1e6,
                has_bn=spec.has_bn,
                vit=spec.genotype.has_msa,
                cse="cse" in spec.genotype.ops,
                vgg_head=not spec.glob_avg,
            )
        )
    return out


def _range(values: list[float], fmt: str = "{:.0f}") -> str:
    a = np.asarray(values, dtype=float)
    return f"{fmt.format(a.min())}-{fmt.format(a.max())} (mean {fmt.format(a.mean())} ± {fmt.format(a.std())})"


def statistics(samples: list[Sample]) -> dict[str, str]:
    """Table 1-style summary of a sample."""
    pct = lambda flags: f"{100 * np.mean(flags):.1f}%"  # noqa: E731
    stats = {
        "architectures": str(len(samples)),
        "cells": _range([s.cells for s in samples]),
        "nodes per cell": _range([s.steps for s in samples]),
        "channels": _range([s.channels for s in samples]),
        "params (M, CIFAR-10)": _range([s.params_m for s in samples], "{:.2f}"),
        "without BN": pct([not s.has_bn for s in samples]),
        "with self-attention (ViT stem)": pct([s.vit for s in samples]),
        "with squeeze-excite": pct([s.cse for s in samples]),
        "VGG-style head": pct([s.vgg_head for s in samples]),
    }
    if samples and samples[0].nodes:
        stats["graph nodes"] = _range([s.nodes for s in samples])
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ghninit.deepnets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="print the Table 1 statistics of a sample of a split")
    st.add_argument("--split", default="test", choices=SPLITS, help="DeepNets-1M split (default: test)")
    st.add_argument("-n", type=int, default=500, help="number of architectures (default: 500)")
    st.add_argument("--start", type=int, default=0, help="index of the first architecture (default: 0)")
    st.add_argument("--no-nodes", action="store_true", help="skip building graphs (no node counts; faster)")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sh = sub.add_parser("show", help="describe architectures of a split")
    sh.add_argument("--split", default="test", choices=SPLITS)
    sh.add_argument("-i", "--index", type=int, nargs="+", default=[0], help="index, or START STOP")
    sh.add_argument("--json", action="store_true", help="print the full specs as JSON lines")
    args = parser.parse_args(argv)

    if args.command == "show":
        indices = range(args.index[0], args.index[1]) if len(args.index) == 2 else args.index
        for i in indices:
            spec = generate(args.split, i)
            print(json.dumps(spec.to_dict()) if args.json else describe(spec))
        return 0

    stats = statistics(_collect(args.split, args.n, args.start, not args.no_nodes))
    if args.json:
        print(json.dumps({"split": args.split, **stats}, indent=2))
        return 0
    paper = PAPER[args.split]
    print(f"DeepNets-1M {args.split.upper()}: architectures {args.start}..{args.start + args.n - 1}")
    print("| statistic | this sample | paper / reference rules |\n|---|---|---|")
    keys = {"cells": "cells", "channels": "channels", "without BN": "no_bn"}
    for name, value in stats.items():
        print(f"| {name} | {value} | {paper.get(keys.get(name, ''), '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
