"""``graph``: build a model by name, draw its GHN graph into a file and print the graph's statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .models import add_model_arguments, build_model, spec_from_args


def configure_graph(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build MODEL (on the meta device: no memory, no initialisation), build the graph a GHN sees, draw it into FILE "
        "(.png, .svg or .pdf: nodes coloured by primitive, laid out by depth from input to output) and print its "
        "statistics (nodes, edges, depth, average degree and shortest path, primitive counts). See docs/graphs.md."
    )
    add_model_arguments(parser)
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="picture to write (.png, .svg, .pdf); omit to only print stats"
    )
    parser.add_argument(
        "--rules", choices=("ghn2", "ghn3"), default="ghn2", help="whose graph description (default ghn2)"
    )
    parser.add_argument("--virtual", action="store_true", help="also draw the virtual edges (GHN-2, distance 2..50)")
    parser.add_argument(
        "--labels", action=argparse.BooleanOptionalAction, default=None, help="label nodes (default: small graphs)"
    )
    parser.add_argument("--max-rows", type=int, default=40, help="depth levels per column of the picture (default 40)")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run_graph(args: argparse.Namespace) -> int:
    from ..graph.build import GHN2_RULES, GHN3_RULES, build_graph
    from ..graph.draw import format_stats

    output = Path(args.output) if args.output else None
    try:
        if output is not None and output.exists() and not args.force:
            raise FileExistsError(f"{output} exists; pass --force to overwrite it")
        spec = spec_from_args(args)
        model = build_model(spec, meta=True)
    except (ValueError, LookupError, TypeError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rules = GHN3_RULES if args.rules == "ghn3" else GHN2_RULES
    graph = build_graph(model, virtual_edge_cutoff=50 if args.virtual else 1, rules=rules)
    stats = graph.stats()
    print(json.dumps({"model": str(spec), **stats}, indent=2) if args.json else f"{spec}: {format_stats(stats)}")
    if graph.uncovered:
        print(f"ghninit: {len(graph.uncovered)} parameters are not in the graph (not predicted)", file=sys.stderr)
    if output is not None:
        try:
            graph.draw(output, virtual=args.virtual, labels=args.labels, max_rows=args.max_rows, title=f"{spec}")
        except (ValueError, FileNotFoundError, ImportError) as err:  # ImportError: matplotlib not installed
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"ghninit: drew {output}", file=sys.stderr)
    return 0
