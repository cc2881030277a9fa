"""Model cards (``README.md``) of converted GHN folders: what the GHN is and exactly where it comes from.

One renderer serves the cache (:mod:`ghninit.zoo.cache`) and the maintainer script
``hub/convert_ppuda.py``. The card's YAML header is huggingface_hub's ``ModelCardData``; its body
has a provenance table made from the folder's ``provenance.json`` (source repository, commit,
path, git blob SHA-1, sha256 of the converted ``model.safetensors``, license), the paper, the
training data, and the accuracy the authors published, marked as not re-measured.
"""

from __future__ import annotations

import json

from .registry import DATASETS, VARIANTS, KnownGHN, variant_of

LIBRARY_URL = "https://github.com/ghninit/ghninit"

_LABELS = {
    "source": "kind of source",
    "repo": "source repository",
    "commit": "commit",
    "path": "path in the repository",
    "source_file": "file name",
    "blob_sha1": "git blob SHA-1 of the file (checked before reading it)",
    "url": "downloaded from",
    "source_sha256": "sha256 of the source file",
    "revision": "revision",
    "sha256_pinned": "pinned sha256 of the source file (checked before reading it)",
    "license_source": "license file",
    "paper": "paper",
    "epoch": "training epoch recorded in the checkpoint",
    "weights_sha256": "sha256 of `model.safetensors`",
    "parameters": "parameters",
    "license": "license",
    "converted_by": "converted by",
}


def render_card(entry: KnownGHN, provenance: dict, note: str = "") -> str:
    """The model card of a converted folder.

    Args:
        entry: the known GHN the weights are (or, with ``note``, are shaped like).
        provenance: the folder's ``provenance.json`` (without ``config``, it is shown at the end).
        note: an extra paragraph, e.g. that a file is not the pinned official one.
    """
    from huggingface_hub import ModelCardData

    dataset, variant = DATASETS[entry.dataset], VARIANTS[entry.variant]
    license_id = str(provenance.get("license", "unknown")).lower()
    header = ModelCardData(
        library_name="ghninit",
        license=license_id,
        tags=[entry.variant, "graph-hypernetwork", "parameter-prediction", "pytorch_model_hub_mixin"],
        datasets=[dataset.hf_dataset],
        source_file=provenance.get("source_file"),  # hub/publish.py prints it in the line to pin
    ).to_yaml()
    rows = "\n".join(
        f"| {_LABELS.get(key, key)} | {_cell(key, value)} |" for key, value in provenance.items() if key != "config"
    )
    published = entry.published
    accuracy = (
        f"As published by the authors ({published.where}), not re-measured here: "
        f"{published.metric or dataset.metric} of networks whose parameters are all predicted by this GHN, "
        "without any training; batch-norm statistics are computed on the evaluation data.\n\n"
        "| GHN | ResNet-50 (unseen architecture) | Best DeepNets-1M TEST architecture (index) |\n"
        "|---|---:|---:|\n"
        f"| {entry.title} | {published.resnet50} | "
        + (f"{published.best} ({published.best_index})" if published.best is not None else "not published")
        + " |\n\n"
        + (f"For comparison: {published.comparison}.\n\n" if published.comparison else "")
        + "Predicted parameters are meant as an initialisation to train or fine-tune from."
        if published
        else "The authors published no accuracy for this GHN."
    )
    repo = (
        f" ({provenance.get('license_source') or provenance['repo'] + ', file `LICENSE`'})"
        if "repo" in provenance
        else ""
    )
    variant_found = variant_of(provenance.get("config", {}))
    rows += f"\n| architecture variant (from the checkpoint's config) | {VARIANTS[variant_found].label if variant_found else 'none known'} |"
    origin = (
        "These weights come from the file named below, which is not the authors' published file (see the note)"
        if note
        else "These are the weights its authors published, unchanged"
    )
    sections = [
        f"---\n{header}\n---",
        f"# {entry.title} (ghninit format)",
        f"A Graph HyperNetwork ({variant.label}: {variant.description}) that predicts all parameters of a neural "
        f"network from its computational graph in one forward pass. {origin} "
        "(only the container changed, from a pickle to safetensors and JSON), in the layout of "
        f"`huggingface_hub.PyTorchModelHubMixin` (`config.json` + `model.safetensors`), for [ghninit]({LIBRARY_URL}):"
        f'\n\n```python\nimport ghninit\nghn = ghninit.load_ghn("{entry.name}")\n```',
        "## Provenance\n\n| | |\n|---|---|\n" + rows + (f"\n\n{note}" if note else ""),
        f"## Paper\n\n{entry.paper}",
        f"## License\n\n{provenance.get('license', 'unknown')}: the license of the source repository{repo}, where "
        "the original checkpoint is distributed.",
        f"## Training data\n\n{variant.label} was trained on the training split of DeepNets-1M (one million "
        f"generated network architectures, from the paper above) for image classification on {dataset.images}. "
        "The GHN holds no images; the data set determines which classes and input sizes its predictions suit.",
        "## Published accuracy\n\n" + accuracy,
        f"## Config\n\n```json\n{json.dumps(provenance.get('config', {}), indent=2)}\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _cell(key: str, value: object) -> str:
    if key == "parameters" and isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value):
        return f"`{value}`"
    return str(value)
