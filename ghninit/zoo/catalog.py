"""What GHNs can be loaded by name: :func:`list_ghns` and the table ``python -m ghninit list`` prints.

One row per GHN: shipped ones (in the package) and known ones (:mod:`ghninit.zoo.registry`), with the
variant, the data set, where the weights come from, whether a copy is on this machine already
(found without any request), the size (of the cached weights, or the published download size) and
the accuracy its authors published. Parameter counts of GHNs not yet downloaded are those of the
variant's architecture, marked as expected (unknown for GHN-3-S, whose layer count is not published).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .cache import converted_folder
from .registry import DATASETS, VARIANTS, HubWeights, KnownGHN, expected_config, known_ghns, variant_of


def _parameters(config: dict) -> int:
    """Parameters of a GHN of ``config``, counted on the meta device (nothing allocated)."""
    from ..ghn.config import ghn_class

    with torch.device("meta"):
        ghn = ghn_class(config)(**{k: v for k, v in config.items() if k != "debug_level"})
    return sum(p.numel() for p in ghn.parameters())


def _cached(entry: KnownGHN, cache_dir) -> tuple[object, Path] | None:
    """``(source, folder)`` of the first source of ``entry`` with a copy here, found without any request."""
    from huggingface_hub import try_to_load_from_cache

    for source in entry.sources:
        if isinstance(source, HubWeights):
            found = try_to_load_from_cache(
                source.repo_id, "model.safetensors", cache_dir=cache_dir, revision=source.revision
            )
            if isinstance(found, str):
                return source, Path(found).parent
        else:
            folder = converted_folder(cache_dir, entry.name, source.cache_key)
            if folder.is_dir():
                return source, folder
    return None


def _short(source) -> str:
    if isinstance(source, HubWeights):
        return f"Hub repo {source.repo_id}@{source.revision[:12]}"
    if source.kind == "official":
        return f"official file {source.repo}@{source.commit[:7]}:{source.path}"
    if source.kind == "hub-pickle":
        return f"Hub file {source.repo_id}@{source.revision[:12]}:{source.filename}"
    return source.describe()


def list_ghns(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every GHN that loads by name, with where it comes from and whether it is cached here.

    Args:
        cache_dir: the cache to look in (as in :func:`ghninit.load_ghn`; default: the usual one).

    Returns:
        one dict per GHN: ``name``, ``aliases``, ``variant``, ``dataset``, ``source`` (shipped,
        Hub repo or official file; the one a load would use), ``sources`` (all, in order),
        ``cached`` (a copy is on this machine), ``location`` (its folder or file, or None),
        ``parameters``, ``parameters_expected`` (True when counted from the variant's
        architecture because nothing is cached yet; None where unknown), ``size_mb`` (of the local
        weights file, or None), ``download_size`` (as published, where the source lists one), ``accuracy`` (the authors' published figures, or this project's measured ones for
        shipped GHNs, with what they measure).
    """
    from .hub import SHIPPED_GHNS, shipped_card, shipped_path

    rows = []
    for name in SHIPPED_GHNS:
        card, path = shipped_card(name), shipped_path(name)
        top1, settings = card.get("evaluation", {}).get("top1", {}), card.get("evaluation", {}).get("settings", {})
        test, resnet50 = top1.get("test", {}), top1.get("resnet50", {})
        variant = variant_of(card["config"])
        rows.append(
            {
                "name": name,
                "aliases": [],
                "variant": VARIANTS[variant].label if variant else "custom",
                "dataset": _dataset_label(card["config"]["num_classes"]),
                "source": "shipped in the package",
                "sources": [f"shipped in the package ({path.name})"],
                "cached": path.is_file(),
                "location": str(path),
                "parameters": card.get("parameters") or _parameters(card["config"]),
                "parameters_expected": False,
                "size_mb": round(path.stat().st_size / 2**20, 1) if path.is_file() else None,
                "download_size": None,
                "accuracy": (
                    f"measured by this project (not published), top-1 % on {settings.get('images', '?')} CIFAR-10 "
                    f"test images: ResNet-50 {resnet50.get('mean', '?')}, best of {test.get('n', '?')} TEST nets "
                    f"{test.get('max', '?')}"
                    if test
                    else None
                ),
            }
        )
    for entry in known_ghns():
        found = _cached(entry, cache_dir)
        config = None
        if found:
            config_path = found[1] / "config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else None
        weights = found[1] / "model.safetensors" if found else None
        expected = config is None
        config = config or expected_config(entry)
        rows.append(
            {
                "name": entry.name,
                "aliases": list(entry.aliases),
                "variant": VARIANTS[entry.variant].label,
                "dataset": DATASETS[entry.dataset].label,
                "source": _short(found[0] if found else entry.sources[0]),
                "sources": [s.describe() for s in entry.sources],
                "cached": found is not None,
                "location": str(found[1]) if found else None,
                "parameters": _parameters(config) if config else None,
                "parameters_expected": expected,
                "size_mb": round(weights.stat().st_size / 2**20, 1) if weights and weights.is_file() else None,
                "download_size": getattr(entry.sources[-1], "size", None),
                "accuracy": f"published, {entry.published.summary(DATASETS[entry.dataset].metric)}"
                if entry.published
                else None,
            }
        )
    return rows


def _dataset_label(num_classes: int) -> str:
    return next((d.label for d in DATASETS.values() if d.num_classes == num_classes), f"{num_classes} classes")


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`list_ghns` as a plain-text table (one GHN per block of lines)."""
    lines = []
    for row in rows:
        aliases = f" (also: {', '.join(row['aliases'])})" if row["aliases"] else ""
        params = (
            f"{row['parameters']:,} parameters{' (expected)' if row['parameters_expected'] else ''}"
            if row["parameters"] is not None
            else "parameters unknown until downloaded"
        )
        size = f", {row['size_mb']} MB" if row["size_mb"] is not None else ""
        size += f", download {row['download_size']}" if row.get("download_size") and not row["cached"] else ""
        cached = f"yes, {row['location']}" if row["cached"] else "no (downloaded on first use)"
        lines += [
            f"{row['name']}{aliases}: {row['variant']}, {row['dataset']}, {params}{size}",
            f"    source: {row['source']}",
            f"    cached: {cached}",
            f"    accuracy: {row['accuracy'] or '-'}",
        ]
    return "\n".join(lines)
