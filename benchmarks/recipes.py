"""Does a GHN start pay off in a user's own training recipe? Train from each start, print one table.

    python benchmarks/recipes.py run --data-dir ../shared/data/cifar10-jpeg --out-dir /work/runs/recipes
    python benchmarks/recipes.py report --out-dir /work/runs/recipes --md benchmarks/results/recipes/README.md

``run`` trains every (architecture, recipe, start, seed) asked for, in that priority order (all
architectures and starts of the first recipe and seed first), on the first ``--train-images`` of a
fixed shuffle of the CIFAR-10 training images, evaluating top-1 on the test images after every
epoch. Recipes (see ``benchmarks/finetune/recipes.py``): ``sgd-0.05``, ``sgd-0.1`` (SGD, momentum
0.9, Nesterov, weight decay 5e-4, cosine to zero), each also with one epoch of linear warmup
(``-w1``), and ``adamw-w1`` (AdamW 1e-3, weight decay 0.05, one epoch of warmup). Starts:
``default`` (the model as timm builds it), ``he``, ``ghn``, ``ghn+orth`` and ``ghn+NAME`` for any
``postprocess=`` name. Each finished run is one JSON file under ``OUT/runs/`` and each epoch a
checkpoint under ``OUT/checkpoints/``: a stopped command resumes where it was. Several workers
may share one ``--out-dir`` (each run is claimed by a lock file naming its process); keep the
folder outside the work tree so that a later session finds it. ``report`` reads every finished
run and writes the table (mean ± std over seeds of test top-1 after each epoch) and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune.recipes import RECIPES, RunSpec, train_run  # noqa: E402
from finetune.runs import mean_std  # noqa: E402
from finetune.starts import ARCHS  # noqa: E402

DEFAULT_STARTS = ("default", "he", "ghn", "ghn+orth")


def _claim(path: Path) -> bool:
    """Take the lock file of a run; a lock whose process is gone (a killed session) is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
                os.kill(pid, 0)
                return False  # alive: another worker has it
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def specs_from_args(args: argparse.Namespace) -> list[RunSpec]:
    """Every run asked for, in priority order: seed, then recipe, then architecture, then start."""
    return [
        RunSpec(arch, recipe, start, seed, args.epochs, args.train_images, args.test_images, args.batch_size, args.ghn)
        for seed in args.seeds
        for recipe in args.recipes
        for arch in args.archs
        for start in args.starts
    ]


def run(args: argparse.Namespace) -> None:
    import torch

    import ghninit
    from ghninit.training.data import load_cifar10

    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    train = load_cifar10(args.data_dir, train=True)
    test = load_cifar10(args.data_dir, train=False)
    ghn = ghninit.load_ghn(args.ghn)
    for spec in specs_from_args(args):
        record_path = out / "runs" / f"{spec.key}.json"
        if record_path.is_file():
            stored = json.loads(record_path.read_text())["config"]
            if stored != json.loads(json.dumps(spec.config())):
                sys.exit(f"{record_path} was made with another configuration; use another --out-dir")
            continue
        lock = out / "locks" / f"{spec.key}.lock"
        if not _claim(lock):
            continue
        try:
            record = train_run(spec, train, test, ghn, out / "checkpoints" / f"{spec.key}.pt",
                               log=lambda m: print(m, file=sys.stderr, flush=True))
            tmp = record_path.with_suffix(".tmp")
            record_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, record_path)
        finally:
            lock.unlink(missing_ok=True)


def load_records(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out_dir / "runs").glob("*.json"))]


def summarise(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(arch, recipe, start) -> {"top1": [[per-epoch top-1 of seed] ...], "seeds": [...], ...}``."""
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in records:
        c = r["config"]
        cell = cells.setdefault((c["arch"], c["recipe"], c["start"]), {"top1": [], "seeds": [], "max_loss": [], "diverged": 0})
        cell["top1"].append(r["test_top1"])
        cell["seeds"].append(c["seed"])
        cell["max_loss"].append(r["max_loss"])
        cell["diverged"] += bool(r.get("diverged"))
    return cells


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    return f"{m:.1f} ± {s:.1f}" if len(values) > 1 else f"{m:.1f}"


def report_markdown(records: list[dict[str, Any]]) -> str:
    """One row per (architecture, recipe, start): test top-1 after each epoch, mean ± std over seeds."""
    cells = summarise(records)
    if not cells:
        return "No finished runs.\n"
    epochs = max(len(v) for cell in cells.values() for v in cell["top1"]) - 1
    head = "| model | recipe | start | seeds | " + " | ".join(f"ep {e}" for e in range(1, epochs + 1))
    lines = [head + " | largest train loss |", "|" + "---|" * (epochs + 5)]
    order = {s: i for i, s in enumerate(DEFAULT_STARTS)}
    recipes = {r: i for i, r in enumerate(RECIPES)}
    for (arch, recipe, start), cell in sorted(cells.items(), key=lambda kv: (kv[0][0], recipes.get(kv[0][1], 99), order.get(kv[0][2], 99), kv[0][2])):
        per_epoch = [_fmt([v[e] for v in cell["top1"] if len(v) > e]) for e in range(1, epochs + 1)]
        flag = f" ({cell['diverged']} diverged)" if cell["diverged"] else ""
        lines.append(
            f"| {arch} | {recipe} | {start} | {len(cell['seeds'])}{flag} | " + " | ".join(per_epoch)
            + f" | {_fmt(cell['max_loss'])} |"
        )
    return "\n".join(lines) + "\n"


def summary_markdown(records: list[dict[str, Any]], base: str = "default", starts: tuple[str, ...] = ("ghn", "ghn+orth")) -> str:
    """Final top-1 of ``base`` and ``starts`` per (model, recipe), and whether the last start is ahead at every epoch."""
    cells = summarise(records)
    names = " | ".join(starts)
    lines = [f"| model | recipe | seeds | {base} | {names} | {starts[-1]} >= {base} at every epoch (means) |",
             "|---|---|---|" + "---:|" * (len(starts) + 1) + "---|"]
    for arch in ARCHS:
        for recipe in RECIPES:
            group = [cells.get((arch, recipe, s)) for s in (base, *starts)]
            if not all(group):
                continue
            epochs = min(len(v) for c in group for v in c["top1"]) - 1
            means = [[mean_std([v[e] for v in c["top1"]])[0] for e in range(epochs + 1)] for c in group]
            behind = [e for e in range(1, epochs + 1) if means[-1][e] < means[0][e]]
            verdict = "yes" if not behind else "no: behind at epoch " + ", ".join(map(str, behind))
            finals = " | ".join(_fmt([v[epochs] for v in c["top1"]]) for c in group)
            seeds = min(len(c["seeds"]) for c in group)
            lines.append(f"| {arch} | {recipe} | {seeds} | {finals} | {verdict} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Test top-1 per epoch, mean ± std over seeds: one panel per (recipe, architecture)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summarise(records)
    panels = sorted({(recipe, arch) for arch, recipe, _ in cells}, key=lambda p: (list(RECIPES).index(p[0]), p[1]))
    cols = len(ARCHS)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (recipe, arch) in zip(axes.flat, panels):
        for (a, r, start), cell in sorted(cells.items()):
            if (a, r) != (arch, recipe):
                continue
            n = min(len(v) for v in cell["top1"])
            stats = [mean_std([v[e] for v in cell["top1"]]) for e in range(n)]
            means = [m for m, _ in stats]
            stds = [s for _, s in stats]
            line = ax.plot(range(n), means, marker="o", ms=3, label=f"{start} (n={len(cell['seeds'])})")[0]
            ax.fill_between(range(n), [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=line.get_color(), alpha=0.15)
        ax.set_title(f"{arch}, {recipe}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> None:
    records = load_records(Path(args.out_dir))
    text = report_markdown(records) + "\nLast epoch, and whether the last start is ahead of the default at every epoch:\n\n" + summary_markdown(records)
    print(text)
    if args.md:
        md = Path(args.md)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)
        plot(records, md.with_name("recipes.png"))
        (md.with_name("recipes.json")).write_text(json.dumps(records, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train the runs asked for (resumable)")
    p_run.add_argument("--data-dir", required=True, help="CIFAR-10: an ImageFolder copy (train/, test/) or torchvision's folder")
    p_run.add_argument("--out-dir", required=True, help="results folder (keep it outside the work tree)")
    p_run.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    p_run.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p_run.add_argument("--starts", nargs="+", default=list(DEFAULT_STARTS), help="default, he, ghn, ghn+POSTPROCESS")
    p_run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p_run.add_argument("--epochs", type=int, default=5)
    p_run.add_argument("--train-images", type=int, default=10_000)
    p_run.add_argument("--test-images", type=int, default=10_000)
    p_run.add_argument("--batch-size", type=int, default=128)
    p_run.add_argument("--ghn", default="cifar10-mini", help="GHN name or path (default: the shipped cifar10-mini)")
    p_run.add_argument("--threads", type=int, default=1, help="torch threads of this worker")
    p_run.set_defaults(func=run)
    p_rep = sub.add_parser("report", help="table and plot of the finished runs")
    p_rep.add_argument("--out-dir", required=True)
    p_rep.add_argument("--md", help="also write this markdown file, recipes.png and recipes.json beside it")
    p_rep.set_defaults(func=report)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
