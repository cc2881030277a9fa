"""Ship a GHN trained with ``benchmarks/train_ghn.py`` inside the ghninit package.

    python hub/ship_weights.py runs/cifar10-mini --name cifar10-mini \\
        --eval runs/eval/mini_test100.json --baseline runs/eval/he_test100.json

copies ``RUN_DIR/final/ghn.safetensors`` (byte for byte, config in its metadata) to
``ghninit/zoo/weights/NAME.safetensors`` and writes its card ``ghninit/zoo/weights/NAME.json``: the file's
sha256 (checked by ``ghninit.load_ghn(NAME)`` on every load), the GHN config, how it was trained
(training config, steps, epochs, CPU-minutes and the last 50 steps' batch loss and top-1, all read
from the run's ``log.csv``) and, when given, the summaries of ``benchmarks/eval_ghn.py`` JSON files
for the GHN and for a baseline. The name must also be listed in ``ghninit.zoo.hub.SHIPPED_GHNS``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "ghninit" / "zoo" / "weights"


def training_summary(run_dir: Path, last: int = 50) -> dict:
    """Steps, epochs, CPU-minutes, and mean batch loss/top-1 of the last ``last`` steps, from ``log.csv``."""
    log = run_dir / "log.csv"
    rows = list(csv.DictReader(log.open()))
    if not rows:
        raise SystemExit(f"{log}: no training steps logged")
    tail = rows[-last:]
    return {
        "steps": int(rows[-1]["step"]) + 1,
        "epochs": float(rows[-1]["epoch"]),
        "cpu_minutes": round(_final_cpu_minutes(run_dir, float(rows[-1]["cpu_minutes"])), 2),
        "final_lr": float(rows[-1]["lr"]),
        f"batch_loss_last_{len(tail)}": round(sum(float(r["loss"]) for r in tail) / len(tail), 4),
        f"batch_top1_last_{len(tail)}": round(sum(float(r["top1"]) for r in tail) / len(tail), 2),
        "train_config": json.loads((run_dir / "train_config.json").read_text()),
    }


def _final_cpu_minutes(run_dir: Path, logged: float) -> float:
    """CPU time of the whole run as the last checkpoint counts it (prefetch workers included), else ``logged``.

    The log's per-step figure leaves out the prefetch workers, which are counted once they exit.
    """
    import torch

    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        return logged
    return max(logged, float(torch.load(ckpt, map_location="cpu", weights_only=True).get("cpu_minutes", logged)))


def eval_summary(path: Path) -> dict:
    """What an ``eval_ghn.py`` JSON file measured: its settings and per-group mean/std/max top-1."""
    data = json.loads(path.read_text())
    args = data["args"]
    keep = ("init", "ghn", "split", "num_nets", "models", "images", "batch_size", "bn")
    if args.get("init") == "he":
        keep = tuple(k for k in keep if k != "ghn")  # the --ghn default, unused by a He run
    return {
        "settings": {k: args[k] for k in keep if k in args},
        "top1": {
            group: {k: round(v, 2) if isinstance(v, float) else v for k, v in s.items()}
            for group, s in data["summary"].items()
        },
    }


def ship(
    run_dir: Path,
    name: str,
    evaluation: Path | None = None,
    baseline: Path | None = None,
    command: str = "",
    out_dir: Path = PACKAGE_WEIGHTS,
    note: str = "",
) -> Path:
    """Copy the run's final GHN into the package and write its card; returns the card's path."""
    from ghninit.zoo.hub import SHIPPED_GHNS, file_sha256, load_ghn

    source = run_dir / "final" / "ghn.safetensors"
    if not source.is_file():
        raise SystemExit(f"{source}: missing; train_ghn.py writes it when a run ends")
    if name not in SHIPPED_GHNS:
        raise SystemExit(f"add {name!r} to ghninit.zoo.hub.SHIPPED_GHNS first, so that load_ghn({name!r}) finds it")
    ghn = load_ghn(source)  # refuse to ship a file that does not load
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.safetensors"
    shutil.copyfile(source, target)
    card = {
        "name": name,
        "file": target.name,
        "sha256": file_sha256(target),
        "config": ghn.config,
        "parameters": sum(p.numel() for p in ghn.parameters()),
        "trained": {"command": command, **({"note": note} if note else {}), **training_summary(run_dir)},
        "evaluation": eval_summary(evaluation) if evaluation else None,
        "baseline": eval_summary(baseline) if baseline else None,
    }
    card_path = target.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="train_ghn.py --save-dir of a finished run")
    parser.add_argument("--name", default="cifar10-mini", help="shipped name (default: cifar10-mini)")
    parser.add_argument("--eval", type=Path, help="eval_ghn.py --out JSON of this GHN")
    parser.add_argument("--baseline", type=Path, help="eval_ghn.py --out JSON of the baseline (--init he)")
    parser.add_argument(
        "--command",
        default="python benchmarks/train_ghn.py --data-dir ../shared/data/cifar10-jpeg --save-dir runs/cifar10-mini "
        "--epochs 1.5 --max-cpu-minutes 150 --threads 1 --checkpoint-minutes 10",
        help="training command to record in the card",
    )
    parser.add_argument("--note", default="", help="how the run went, in words (e.g. where it started from)")
    parser.add_argument(
        "--out-dir", type=Path, default=PACKAGE_WEIGHTS, help=f"where to write (default: {PACKAGE_WEIGHTS})"
    )
    args = parser.parse_args(argv)
    card = ship(args.run_dir, args.name, args.eval, args.baseline, args.command, args.out_dir, args.note)
    print(f"wrote {card.with_suffix('.safetensors')} and {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
