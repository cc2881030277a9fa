"""Time and peak memory of initialising a large model built on the meta device vs built normally.

``normal``: ``timm.create_model(name)`` (allocates and runs timm's default initialisation), then
``ghninit.initialize(model, ghn=...)``. ``meta``: build under ``torch.device("meta")`` (no memory,
no initialisation), then ``ghninit.initialize(model, ghn=..., device="cpu")``, which allocates
once and writes the predictions. Each (model, mode) runs in a fresh process, so the peak resident
memory (``ru_maxrss``) is that run's own; the median of ``--repeats`` processes is reported.

    python benchmarks/meta_materialize.py --ghn ../shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ["convnext_large", "vit_large_patch16_224"]


def child(name: str, mode: str, ghn_path: str, threads: int) -> dict:
    """One measurement, in this process: build + initialize; returns seconds and peak RSS."""
    import timm

    import ghninit

    torch.set_num_threads(threads)
    ghn = ghninit.load_ghn(ghn_path)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode == "meta":
        with torch.device("meta"):
            model = timm.create_model(name)
    else:
        model = timm.create_model(name)
    built = time.perf_counter()
    report = ghninit.initialize(model, ghn=ghn, device="cpu" if mode == "meta" else None)
    end = time.perf_counter()
    assert not any(t.is_meta for t in model.state_dict().values())
    return {
        "model": name,
        "mode": mode,
        "params_millions": report.n_params_total / 1e6,
        "percent_predicted": 100 * report.fraction_predicted,
        "build_s": built - start,
        "initialize_s": end - built,
        "total_s": end - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base_rss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ghn", required=True, help="GHN: name, Hub repo, folder or file")
    parser.add_argument("--models", nargs="+", default=MODELS, help="timm model names")
    parser.add_argument("--repeats", type=int, default=3, help="processes per (model, mode); the median is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("runs/meta_materialize.json"), help="JSON results")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.ghn, args.threads)))
        return 0
    rows = []
    for name in args.models:
        for mode in ("normal", "meta"):
            runs = []
            for _ in range(args.repeats):
                cmd = [
                    sys.executable,
                    __file__,
                    "--ghn",
                    args.ghn,
                    "--threads",
                    str(args.threads),
                    "--child",
                    name,
                    mode,
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            row = dict(runs[0])
            for key in ("build_s", "initialize_s", "total_s", "peak_rss_mb", "rss_before_mb"):
                row[key] = statistics.median(r[key] for r in runs)
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = [
        "| model | params (M) | build | build (s) | initialize (s) | total (s) | peak RSS (MB) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_millions']:.0f} | {r['mode']} | {r['build_s']:.2f} | {r['initialize_s']:.2f} "
            f"| {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
