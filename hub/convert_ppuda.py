"""Convert an official GHN checkpoint (ppuda ``.pt``: GHN-2, GHN-1 or MLP) into ghninit's Hub layout.

    python hub/convert_ppuda.py ghn2_imagenet.pt out/ghn2-imagenet

reads SRC.pt with ``torch.load(weights_only=True)`` only (tensors and plain containers, no code),
recognises it by its git blob SHA-1 among the pinned official files (``ghninit.zoo.registry``), writes
OUT_DIR/config.json, OUT_DIR/model.safetensors (``save_pretrained``, the huggingface_hub mixin),
OUT_DIR/provenance.json and a model card OUT_DIR/README.md (``ghninit.zoo.cards``: source repository,
commit, path, blob SHA-1, sha256 of the converted weights, license, published accuracy), then
checks that the converted folder holds exactly the same tensors and predicts exactly the same
parameters as the ``.pt`` loaded directly. OUT_DIR appears only once that check has passed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    from ghninit.zoo.hub import file_sha256

    return file_sha256(path)


def identify(src: Path, config: dict, name: str | None = None):
    """``(entry, official, note)``: the known GHN ``src`` is, the pinned file it matches (or None), and
    a note for the card when it is not that pinned file.

    The file is recognised by its git blob SHA-1 among the pinned official files; otherwise the
    known GHN is ``name``, or the one whose variant and class count match the checkpoint's config.
    """
    from ghninit.zoo.cache import git_blob_sha1
    from ghninit.zoo.official import OfficialFile
    from ghninit.zoo.registry import DATASETS, KNOWN_GHNS, known_ghns, variant_of

    blob = git_blob_sha1(src)
    for entry in known_ghns():
        for source in entry.sources:
            if isinstance(source, OfficialFile) and source.blob_sha1 == blob and name in (None, *entry.names):
                return entry, source, ""
    if name is not None:
        entry = KNOWN_GHNS[name]
    else:
        variant = variant_of(config)
        matches = [
            e for e in known_ghns() if e.variant == variant and DATASETS[e.dataset].num_classes == config["num_classes"]
        ]
        if not matches:
            raise SystemExit(
                f"{src}: no known GHN has variant {variant} and {config['num_classes']} classes; pass --name"
            )
        entry = matches[0]
    official = next((s for s in entry.sources if isinstance(s, OfficialFile)), None)
    pinned = f" ({official.path}, git blob SHA-1 `{official.blob_sha1}`)" if official else ""
    note = (
        f"Note: `{src.name}` (git blob SHA-1 `{blob}`) is not the pinned official file of `{entry.name}`{pinned}; "
        "the published accuracy below is that of the official checkpoint."
    )
    return entry, None, note


def build_model(name: str, dataset: str):
    """A torchvision model for the prediction check, adapted to 32x32 inputs for CIFAR-10."""
    import torch
    import torchvision

    torch.manual_seed(0)
    from ghninit.zoo.registry import DATASETS

    model = getattr(torchvision.models, name)(num_classes=DATASETS[dataset].num_classes)
    if dataset == "cifar10":
        from ghninit.adapt import adapt_to_cifar

        adapt_to_cifar(model)
    return model


def verify(src: Path, folder: Path, dataset: str, models: list[str]) -> list[str]:
    """Compare the converted folder with the ``.pt`` loaded directly: tensors, then predictions.

    Returns:
        one line per model checked; raises ``AssertionError`` on any difference.
    """
    import torch

    from ghninit.zoo.hub import ghn_from_reference_checkpoint, load_ghn

    direct, converted = ghn_from_reference_checkpoint(src).eval(), load_ghn(folder)
    a, b = direct.state_dict(), converted.state_dict()
    assert a.keys() == b.keys(), f"different tensors: {sorted(a.keys() ^ b.keys())}"
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"tensor {key} differs"
    assert direct.config == converted.config, f"config {converted.config} != {direct.config}"
    lines = []
    for name in models:
        model = build_model(name, dataset)
        want = direct.predict(model, predict_classifier=True)
        got = converted.predict(model, predict_classifier=True)
        assert want.keys() == got.keys(), f"{name}: predicted sets differ"
        for key in want:
            assert torch.equal(want[key], got[key]), f"{name}: prediction for {key} differs"
        lines.append(f"{name}: {len(want)} tensors, {sum(t.numel() for t in want.values()):,} values, identical")
    return lines


def convert(src: Path, out: Path, name: str | None = None, models: list[str] = ("resnet18",), overwrite=False):
    """Convert ``src`` into ``out`` (see the module docstring); returns a summary dict."""
    import torch

    import ghninit
    from ghninit.zoo.cache import staged_folder, write_ghn_folder
    from ghninit.zoo.cards import render_card
    from ghninit.zoo.hub import GHNLoadError, ghn_from_reference_checkpoint

    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SystemExit(f"{out} exists and is not empty; pass --overwrite to replace it")
    ghn = ghn_from_reference_checkpoint(src)  # torch.load(weights_only=True): no code is unpickled
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GHNLoadError(f"{src}: not a reference GHN checkpoint ({{'state_dict', 'config', 'epoch'}})")
    entry, official, note = identify(src, ghn.config, name)
    if official is not None:
        provenance = {k: v for k, v in official.provenance().items() if k != "url"}  # converted from a local copy
    else:
        provenance = {"source": "local file", "source_file": src.name, "license": "MIT"}
    provenance.update(
        source_file=src.name,
        source_sha256=sha256_file(src),
        epoch=checkpoint.get("epoch", "unknown"),
        converted_by=f"hub/convert_ppuda.py of ghninit {ghninit.__version__}",
    )
    with staged_folder(out) as stage:
        provenance = write_ghn_folder(ghn, stage, provenance, lambda p: render_card(entry, p, note))
        checks = verify(src, stage, entry.dataset, list(models))
    return {
        "name": entry.name,
        "official": official is not None,
        "out": str(out),
        "source_sha256": provenance["source_sha256"],
        "weights_sha256": sha256_file(out / "model.safetensors"),
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; see ``--help``."""
    from ghninit.zoo.registry import KNOWN_GHNS

    parser = argparse.ArgumentParser(
        description="Convert an official GHN checkpoint (ppuda .pt: GHN-2, GHN-1 or MLP) into the ghninit layout "
        "(config.json + model.safetensors + provenance.json + README.md model card) and verify it predicts "
        "identically. The file is recognised by its git blob SHA-1 among the pinned official checkpoints.",
    )
    parser.add_argument("src", type=Path, metavar="SRC.pt", help="reference checkpoint, e.g. ghn2_imagenet.pt")
    parser.add_argument("out", type=Path, metavar="OUT_DIR", help="folder to write (must be absent or empty)")
    parser.add_argument(
        "--name",
        choices=sorted(KNOWN_GHNS),
        help="known GHN it is (default: the pinned official file with the same git blob SHA-1, else the known "
        "GHN with the checkpoint's variant and class count)",
    )
    parser.add_argument(
        "--verify-models",
        default="resnet18",
        help="comma-separated torchvision models whose predictions must match (default: resnet18)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    args = parser.parse_args(argv)

    summary = convert(args.src, args.out, args.name, [m for m in args.verify_models.split(",") if m], args.overwrite)
    kind = "the pinned official file" if summary["official"] else "not a pinned official file"
    print(f"converted {args.src} ({summary['name']}, {kind}, sha256 {summary['source_sha256']}) -> {summary['out']}")
    for line in summary["checks"]:
        print(f"  verified {line}")
    print(f"  model.safetensors sha256 {summary['weights_sha256']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
    sys.exit(main())
