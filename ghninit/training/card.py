"""The card of a GHN trained with ghninit: what it has seen and what it cost, beside its weights.

A run's ``final/`` folder holds ``training.json`` (the card, machine-readable) and ``README.md``
(the same as a model card); ``ghn.safetensors`` carries it in its metadata under ``card``. The
card names the data (folder name, classes, image size, image counts, normalisation statistics of
the training images and a sha256 of the sorted relative file list), the variant and its config,
the steps, the CPU/GPU time, and the end-of-run evaluation. :func:`read_card` finds it again for a
GHN path, e.g. to warn when a GHN is used on the task it was trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CARD_NAME = "training.json"


def write_card(folder: str | os.PathLike, card: dict) -> None:
    """Write ``training.json`` and ``README.md`` into a trained GHN's folder."""
    folder = Path(folder)
    (folder / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
    (folder / "README.md").write_text(render_card(card))


def read_card(path: str | os.PathLike) -> dict | None:
    """The card of a trained GHN (its folder, a file in it, or a ``ghn.safetensors``); None if it has none."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / CARD_NAME).is_file():
        return json.loads((folder / CARD_NAME).read_text())
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "card" in meta:
            return json.loads(meta["card"])
    return None


def render_card(card: dict) -> str:
    """A markdown model card from the card's fields."""
    data, run = card.get("data", {}), card.get("training", {})
    rows = [
        ("variant", f"{card.get('variant')} ({card.get('ghn_class')}, {card.get('parameters', 0):,} parameters)"),
        ("data", f"{data.get('name')} ({data.get('path')})"),
        ("classes", data.get("num_classes")),
        ("image size", f"{data.get('image_size')} x {data.get('image_size')}"),
        ("training images", data.get("train_images", "not recorded")),
        ("evaluation images", f"{data.get('eval_images', 0)} ({data.get('eval_split') or 'none'})"),
        ("sha256 of the file list", f"`{data['files_sha256']}`" if data.get("files_sha256") else "not recorded"),
        ("normalisation (mean, std)", f"{data.get('mean')}, {data.get('std')}" if data.get("mean") else "not recorded"),
        ("steps (epochs)", f"{run.get('steps')} ({run.get('epochs')})"),
        ("stopped because", run.get("stop_reason")),
        ("processes, device", f"{run.get('processes')}, {run.get('device')}"),
        ("CPU-minutes (rank 0)", run.get("cpu_minutes_rank0")),
        ("wall minutes / GPU-minutes", f"{run.get('wall_minutes')} / {run.get('gpu_minutes')}"),
        ("norm regulariser weight", run.get("norm_reg")),
        ("command", f"`{card.get('command')}`"),
        ("ghninit", f"{card.get('ghninit_version')}, {card.get('created')}"),
    ]
    evaluation = card.get("evaluation")
    result = (
        f"Top-1 on the {evaluation['images']} evaluation images, mean of {evaluation['networks']} "
        f"({evaluation['protocol']}): **{evaluation['mean_top1']}%** (per network: {evaluation['top1']})."
        if evaluation
        else "Not evaluated (no test/ or val/ folder, or --eval-nets 0)."
    )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "---\nlibrary_name: ghninit\ntags:\n- graph-hypernetwork\n- parameter-prediction\n---\n\n"
        f"# {card.get('variant')} trained on {data.get('name')}\n\n"
        "A Graph HyperNetwork trained with `python -m ghninit train`. Load it with "
        '`ghninit.load_ghn("<this folder>")` or `ghninit.initialize(model, ghn="<this folder>")`. '
        "Its predictions suit models for these classes and this image size; normalise inputs with the "
        "statistics below.\n\n| | |\n|---|---|\n"
        f"{table}\n\n## Evaluation\n\n{result}\n\n"
        f"## Config\n\n```json\n{json.dumps(card.get('train_config', {}), indent=2)}\n```\n"
    )
