"""Running the fine-tuning benchmarks: resumable per-seed runs, reports and the shared command line.

:class:`RunStore` keeps one JSON file per finished (architecture, initialisation, seed) so a stopped
benchmark resumes; :func:`run_all` / :func:`run_benchmark` run (or read back) every seed;
:func:`write_report` writes the JSON, the markdown table (mean ± std, paired differences with He)
and the PNG plot; :func:`add_common_args`, :func:`fill_defaults` and :func:`progress` are the
command-line pieces both scripts share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .init import INIT_NAMES, INITS, ghninit


class ConfigMismatch(RuntimeError):
    """A results folder holds runs made with another configuration."""


class RunStore:
    """One JSON file per finished (architecture, initialisation, seed) under ``out_dir/runs/``.

    A stopped benchmark loses no finished seed: rerun the same command and finished runs are read
    back instead of trained again. GHN runs are filed under the first 12 hex digits of their
    GHN's sha256 (``vit-ghn-1a2b3c4d5e6f-seed0.json``), so He runs are shared and runs with
    different GHNs sit side by side. A file made with another configuration raises
    :class:`ConfigMismatch` (use another ``--out-dir`` or ``--overwrite``).
    """

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False):
        self.dir = Path(out_dir) / "runs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite

    def path(self, arch: str, init: str, seed: int, config: dict[str, Any]) -> Path:
        tag = re.sub(r"[^\w.-]", "_", str(config["ghn"])[:12]) + "-" if config.get("ghn") else ""
        if config.get("postprocess"):  # "<preset>: <settings>"
            tag += re.sub(r"[^\w.-]", "_", str(config["postprocess"]).split(":")[0]) + "-"
        return self.dir / f"{arch}-{init}-{tag}seed{seed}.json"

    def load(self, arch: str, init: str, seed: int, config: dict[str, Any]) -> dict[str, Any] | None:
        """The finished run, or ``None`` when there is none (or ``overwrite`` is set)."""
        path = self.path(arch, init, seed, config)
        if self.overwrite or not path.is_file():
            return None
        record = json.loads(path.read_text())
        expected = json.loads(json.dumps(config))
        if record.get("config") != expected:
            stored = record.get("config") or {}
            differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            raise ConfigMismatch(
                f"{path} was made with another configuration (differs in: {', '.join(differ)}); "
                "pass another --out-dir, or --overwrite to redo it"
            )
        return record

    def save(self, record: dict[str, Any]) -> Path:
        """Write a finished run (with its ``config``) atomically: a stop mid-write leaves no half file."""
        path = self.path(record["arch"], record["init"], record["seed"], record["config"])
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _cell(values: Sequence[float], signed: bool = False) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return f"{text} ± {std:.2f} (n={len(values)})" if len(values) > 1 else f"{text} (n=1)"


def paired_differences(runs: Iterable[dict[str, Any]], arch: str, init: str, base: str = "he") -> list[float]:
    """``final(init) - final(base)`` for every seed that has both runs of ``arch``, in seed order."""
    finals: dict[str, dict[int, float]] = {init: {}, base: {}}
    for r in runs:
        if r["arch"] == arch and r["init"] in finals:
            finals[r["init"]][r["seed"]] = r["final"]
    return [finals[init][seed] - finals[base][seed] for seed in sorted(set(finals[init]) & set(finals[base]))]


def summarise(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{arch: {init: {"mean", "std", "n", "values"}}}`` of the runs' ``final`` values, in run order."""
    runs = list(runs)
    summary: dict[str, dict[str, Any]] = {}
    for arch in dict.fromkeys(r["arch"] for r in runs):
        summary[arch] = {}
        for init in INITS:
            values = [r["final"] for r in runs if r["arch"] == arch and r["init"] == init]
            if values:
                mean, std = mean_std(values)
                summary[arch][init] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return summary


def write_report(
    out_dir: str | os.PathLike,
    stem: str,
    title: str,
    metric: str,
    runs: Iterable[dict[str, Any]],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write ``<stem>.json``, ``<stem>.md`` (table, mean ± std over seeds) and ``<stem>.png``.

    Each run is a dict with ``arch``, ``init``, ``seed``, ``final`` (the metric after the last
    epoch, in %) and ``curve`` (``{"epochs": [...], "values": [...]}``).

    Returns:
        the summary, as :func:`summarise` gives it.
    """
    runs = list(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs)
    archs = list(summary)
    inits = [i for i in INITS if any(r["init"] == i for r in runs)]
    (out / f"{stem}.json").write_text(
        json.dumps({"title": title, "metric": metric, "meta": meta, "summary": summary, "runs": runs}, indent=1)
    )

    paired = [i for i in inits if i != "he"] if "he" in inits else []
    header = ["architecture"] + [INIT_NAMES[i] for i in inits] + [f"{i} - He (paired)" for i in paired]
    lines = [f"## {title}", "", f"{metric}, mean ± std over seeds (n = number of seeds).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch in archs:
        cells = [arch]
        for init in inits:
            cells.append(_cell(summary[arch].get(init, {}).get("values", [])))
        for init in paired:
            differences = paired_differences(runs, arch, init)
            cells.append(_cell(differences, signed=True) if differences else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"- {key}: {value}" for key, value in meta.items()]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    _plot(out / f"{stem}.png", title, metric, runs, archs, inits)
    return summary


def _plot(path: Path, title: str, metric: str, runs: list[dict[str, Any]], archs: list[str], inits: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = max(len(archs), 1)
    fig, axes = plt.subplots(1, panels, figsize=(max(6.5, 4.5 * panels), 3.8), squeeze=False)
    colours = {"he": "tab:blue", "ghn": "tab:orange", "ghn-orth": "tab:green", "orth": "tab:gray"}
    for ax, arch in zip(axes[0], archs):
        for init in inits:
            curves = [r["curve"] for r in runs if r["arch"] == arch and r["init"] == init]
            if not curves:
                continue
            epochs = curves[0]["epochs"]
            stacked = torch.tensor([c["values"] for c in curves if c["epochs"] == epochs], dtype=torch.float64)
            mean = stacked.mean(0)
            label = f"{INIT_NAMES[init]} (n={len(stacked)})"
            ax.plot(epochs, mean.tolist(), marker="o", ms=3, color=colours[init], label=label)
            if len(stacked) > 1:
                std = stacked.std(0)
                ax.fill_between(epochs, (mean - std).tolist(), (mean + std).tolist(), color=colours[init], alpha=0.2)
        ax.set_title(arch)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_all(
    archs: Sequence[str],
    inits: Sequence[str],
    seeds: Sequence[int],
    store: RunStore,
    protocol: dict[str, Any],
    ghn_info: dict[str, Any] | None,
    run: Callable[[str, str, int], dict[str, Any]],
    on_update: Callable[[list[dict[str, Any]]], Any] = lambda records: None,
    postprocess: str | None = None,
    report_only: bool = False,
) -> list[dict[str, Any]]:
    """Run (or read back) every (seed, architecture, initialisation), seed by seed.

    ``run(arch, init, seed)`` returns a record with at least ``final`` and ``curve``; it is saved
    with its configuration (:func:`run_config`) as soon as it finishes, and ``on_update`` is
    called with all records so far (to write the report), so a stopped benchmark keeps every
    finished seed and a rerun of the same command carries on where it stopped. With
    ``report_only``, nothing is trained: runs not finished yet are skipped (and named on stderr).
    """
    records: list[dict[str, Any]] = []
    for seed in seeds:
        for arch in archs:
            for init in inits:
                config = json.loads(json.dumps(run_config(protocol, init, ghn_info, postprocess)))
                record = store.load(arch, init, seed, config)
                if record is None and report_only:
                    print(f"{arch} {init} seed {seed}: not finished, left out (--report-only)", file=sys.stderr)
                    continue
                if record is None:
                    record = {"arch": arch, "init": init, "seed": seed, "config": config, **run(arch, init, seed)}
                    print(f"{arch} {init} seed {seed}: {record['final']:.2f} -> {store.save(record)}", file=sys.stderr)
                else:
                    print(
                        f"{arch} {init} seed {seed}: {record['final']:.2f} (read back from {store.path(arch, init, seed, config)})",
                        file=sys.stderr,
                    )
                records.append(record)
                on_update(records)
    return records


def add_common_args(
    parser: argparse.ArgumentParser, archs: Sequence[str], default_archs: Sequence[str], out_dir: str
) -> None:
    """The options both benchmarks share (architectures, initialisations, GHN, seeds, output)."""
    parser.add_argument(
        "--archs",
        nargs="+",
        choices=archs,
        default=None,
        help=f"architectures (default: {' '.join(default_archs)}; darts is skipped with a warning when "
        "ghninit.deepnets is missing, and is an error when named here)",
    )
    parser.add_argument(
        "--init",
        nargs="+",
        choices=INITS,
        default=list(INITS),
        help="initialisations to compare (default: all): he; ghn; ghn-orth (GHN, then --postprocess); "
        "orth (He, then --postprocess: random orthogonal weights, the control for ghn-orth)",
    )
    parser.add_argument(
        "--postprocess",
        default="orth",
        choices=sorted(ghninit.write.postprocess.PRESETS),
        help="post-processing of ghn-orth and orth (ghninit.write.postprocess presets): orth (default: the recipe "
        "of Knyazev, arXiv 2207.10049, unit singular values) or orth-he (He's norms, classifier included)",
    )
    parser.add_argument(
        "--ghn",
        default="imagenet",
        metavar="NAME_OR_PATH",
        help="GHN for --init ghn: a .safetensors file, a folder, a name shipped in ghninit/weights "
        "(e.g. cifar10-mini), a known name (imagenet, cifar10) or a Hub repo id (default: imagenet, as in the paper)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument(
        "--out-dir",
        default=out_dir,
        help=f"where results go (default: {out_dir}); finished seeds are kept in OUT_DIR/runs/",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo runs already finished in --out-dir")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the report from the runs of --out-dir already finished, leaving out the others",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few-minute smoke run (the defaults it changes are listed at the end)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def fill_defaults(args: argparse.Namespace, full: dict[str, Any], quick: dict[str, Any]) -> argparse.Namespace:
    """Set every option left at ``None`` from ``quick`` (with ``--quick``) or ``full``."""
    for key, value in full.items():
        if getattr(args, key) is None:
            setattr(args, key, quick.get(key, value) if args.quick else value)
    return args


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Any:
    """tqdm progress on stderr; updates at most every 30 s when stderr is not a terminal (logs)."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 30,
        dynamic_ncols=True,
    )


def run_config(
    protocol: dict[str, Any], init: str, ghn_info: dict[str, Any] | None, postprocess: str | None = None
) -> dict[str, Any]:
    """What a finished run must match to be reused: the protocol, plus the GHN's weights for GHN runs
    and the post-processing (its full settings) for ``ghn-orth`` and ``orth`` runs."""
    config = dict(protocol)
    if init in ("ghn", "ghn-orth") and ghn_info is not None:
        config["ghn"] = ghn_info["sha256"] or ghn_info["resolved"]
    if init in ("ghn-orth", "orth") and postprocess is not None:
        config["postprocess"] = f"{postprocess}: {ghninit.write.postprocess.resolve_postprocess(postprocess).describe()}"
    return config


def run_benchmark(
    stem: str,
    title: str,
    metric: str,
    description: str,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    ghn_info: dict[str, Any] | None,
    data: str | os.PathLike,
    archs: Sequence[str],
    protocol: dict[str, Any],
    run: Callable[[str, str, int], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Run (or read back) every seed of a fine-tuning benchmark, keeping its report up to date.

    ``stem`` names the script (``benchmarks/<stem>.py``) and its outputs in ``args.out_dir``;
    ``description`` is the protocol line under the table. Prints the markdown table at the end.

    Returns:
        the summary, as :func:`summarise` gives it.
    """
    meta = describe_run(f"{stem}.py", argv, ghn_info, description, args.seeds, data)

    def report(records: list[dict[str, Any]]) -> None:
        write_report(args.out_dir, stem, title, metric, records, meta)

    store = RunStore(args.out_dir, args.overwrite)
    postprocess = getattr(args, "postprocess", None)
    records = run_all(
        archs, args.init, args.seeds, store, protocol, ghn_info, run, report, postprocess, args.report_only
    )
    if not records:
        raise SystemExit(f"no finished runs in {args.out_dir} match these options; nothing to report")
    print(Path(args.out_dir, f"{stem}.md").read_text())
    return summarise(records)


def describe_run(
    script: str,
    argv: Sequence[str] | None,
    ghn_info: dict[str, Any] | None,
    protocol: str,
    seeds: Sequence[int],
    data: str | os.PathLike,
) -> dict[str, str]:
    """The lines under a results table: command, GHN weights, protocol, seeds, data, machine."""
    import platform

    command = shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])
    if ghn_info is None:
        ghn = "not used"
    else:
        ghn = f"`{ghn_info['source']}` -> `{ghn_info['resolved']}`, sha256 {ghn_info['sha256'] or 'n/a'}, {ghn_info['num_classes']} classes"
    return {
        "command": f"`{command}`",
        "GHN": ghn,
        "protocol": protocol,
        "seeds": " ".join(map(str, seeds)),
        "data": str(data),  # as given on the command line
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
