"""Initialisations compared by the fine-tuning benchmarks, and the GHN they use.

:func:`resolve_ghn` loads ``--ghn NAME_OR_PATH`` and says exactly which weights it is;
:func:`he_init_` is the paper's baseline; :func:`initialise` applies one of :data:`INITS` (He, GHN,
GHN then ``ghninit.write.postprocess``, or the same post-processing of He's weights as a control);
:func:`report_summary` keeps the JSON-able part of ghninit's report in the results files.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

try:
    import ghninit
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import ghninit
from ghninit.zoo.hub import KNOWN_GHNS, SHIPPED_GHNS, download_ghn, file_sha256, shipped_card, shipped_path

INITS = ("he", "ghn", "ghn-orth", "orth")
INIT_NAMES = {"he": "He init", "ghn": "GHN init", "ghn-orth": "GHN + post-processing", "orth": "orthogonal init"}


def resolve_ghn(name_or_path: str) -> tuple[ghninit.GHN2, dict[str, Any]]:
    """Load the GHN named by ``--ghn`` and say exactly which weights it is.

    Looked up as :func:`ghninit.load_ghn` does (a shipped name such as ``cifar10-mini`` or a
    known name such as ``imagenet`` wins over a folder of that name). Known names and Hub repo ids
    are fetched with :func:`ghninit.zoo.hub.download_ghn` (huggingface_hub's cache), so that the
    weights file itself can be hashed.

    Returns:
        the GHN (eval mode) and a JSON-able description: ``source`` (what was asked for),
        ``resolved`` (the file or folder loaded), ``sha256`` of the weights file, ``num_classes``
        and ``max_shape``.

    Raises:
        ghninit.GHNLoadError: when nothing could be loaded; the message lists what was tried.
    """
    name = str(name_or_path)
    try:
        if name in SHIPPED_GHNS:
            found, ghn = shipped_path(name), ghninit.load_ghn(name)  # by name: its sha256 is checked
        else:
            local = Path(name).expanduser()
            found = download_ghn(name) if name in KNOWN_GHNS or not local.exists() else local
            ghn = ghninit.load_ghn(found)
    except ghninit.GHNLoadError as err:
        raise ghninit.GHNLoadError(f"--ghn {name}: {err}") from err
    weights = found if found.is_file() else found / "model.safetensors"
    return ghn, {
        "source": name,
        "resolved": display_path(found),
        "sha256": file_sha256(weights) if weights.is_file() else None,
        "num_classes": ghn.num_classes,
        "max_shape": list(ghn.max_shape),
        "trained_on": trained_on(name, found),
    }


def trained_on(name: str, found: Path | None = None) -> str | None:
    """The data set a GHN was trained on, from its shipped card, the card ``python -m ghninit train`` wrote
    beside it (CIFAR-10's ten classes read as ``"cifar10"``) or its known name; None when not recorded."""
    from ghninit.training.card import read_card
    from ghninit.training.data import CIFAR10_CLASSES

    card = read_card(found) if name not in SHIPPED_GHNS and found is not None and found.exists() else None
    if card and card.get("data"):
        data = card["data"]
        return "cifar10" if data.get("classes") == list(CIFAR10_CLASSES) else data.get("name")
    if name in SHIPPED_GHNS:
        return shipped_card(name).get("trained", {}).get("train_config", {}).get("dataset")
    entry = KNOWN_GHNS.get(name)
    return getattr(entry, "dataset", None)


def same_task_warning(ghn_info: dict[str, Any] | None, task_dataset: str) -> str | None:
    """A warning when the GHN was trained on the fine-tuning task's own data set (no longer a transfer)."""
    if not ghn_info or ghn_info.get("trained_on") != task_dataset:
        return None
    return (
        f"the GHN '{ghn_info['source']}' was trained on {task_dataset} itself (all its labelled training images): "
        f"a few-shot {task_dataset} start from it has seen the whole labelled task, unlike the paper's protocol, "
        "which transfers a GHN trained on ImageNet. Read its rows as an upper bound, not as a transfer result."
    )


def display_path(path: Path) -> str:
    """``path`` as reports show it: relative to the repository, or under ``<ghninit cache>``; never machine-specific."""
    from ghninit.zoo.cache import cache_root

    path = path.resolve()
    for root, label in ((Path(__file__).resolve().parents[2], ""), (cache_root().resolve(), "<ghninit cache>/")):
        if path.is_relative_to(root):
            return f"{label}{path.relative_to(root).as_posix()}"
    return path.name


@torch.no_grad()
def he_init_(model: nn.Module) -> None:
    """He (Kaiming) initialisation in place: the baseline of the paper's Table 6.

    Every Conv2d / Linear weight (and a fused attention input projection) is drawn from
    ``N(0, 2 / fan_in)`` -- the same fan-in scale GHN-2 normalises its predictions to -- with
    zero biases; normalisation layers get weight 1 and bias 0. Parameters of other kinds
    (positional embeddings, class tokens) keep the model's own initialisation.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            nn.init.kaiming_normal_(module.in_proj_weight, mode="fan_in", nonlinearity="relu")
            if module.in_proj_bias is not None:
                nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


def initialise(
    model: nn.Module,
    init: str,
    ghn: ghninit.GHN2 | None = None,
    postprocess: str | ghninit.Orthogonalize = "orth",
) -> ghninit.Report | None:
    """He-initialise ``model``, then apply ``init``.

    * ``"he"``: nothing more;
    * ``"ghn"``: overwrite what the GHN predicts. The classifier is predicted only when its number
      of outputs equals the GHN's number of classes (``keep_classifier=None``); otherwise it stays a
      freshly He-initialised layer, as in the paper. So the He and GHN runs of a seed differ
      exactly in the parameters the GHN wrote;
    * ``"ghn-orth"``: as ``"ghn"``, with ``postprocess`` applied to the predicted conv/linear weights
      (``ghninit.initialize(..., postprocess=...)``);
    * ``"orth"``: the same post-processing applied to the He-initialised weights: random orthogonal
      weights with the same norms, the control that separates "orthogonal" from "predicted".

    Returns:
        ghninit's report for the GHN inits, ``None`` for the others.
    """
    if init not in INITS:
        raise ValueError(f"init={init!r}: expected one of {INITS}")
    he_init_(model)
    if init == "he":
        return None
    if init == "orth":
        config = ghninit.write.postprocess.resolve_postprocess(postprocess)
        ghninit.write.postprocess.apply_(model, config)
        return None
    if ghn is None:
        raise ValueError(f"init={init!r} needs a GHN (--ghn NAME_OR_PATH)")
    return ghninit.initialize(
        model, ghn=ghn, keep_classifier=None, postprocess=postprocess if init == "ghn-orth" else None
    )


def report_summary(report: ghninit.Report | None) -> dict[str, Any] | None:
    """The JSON-able part of a ghninit report that results files keep."""
    if report is None:
        return None
    return {
        "n_params_predicted": report.n_params_predicted,
        "n_params_total": report.n_params_total,
        "classifier_predicted": report.classifier_predicted,
        "skipped": sorted(report.skipped),
        **({"postprocess": report.postprocess, "postprocessed": len(report.postprocessed)} if report.postprocess else {}),
    }
