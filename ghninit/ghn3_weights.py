"""The published GHN-3 weights: names, config inference, safe conversion to safetensors, fetching.

The reference publishes GHN-3 as joblib pickles of a bare state dict (no config) on the Hugging
Face Hub repo ``SamsungSAILMontreal/ghn3``. Here such a file is read with the restricted
unpickler of :mod:`ghninit.safe_pickle` (no code from it runs), its config is inferred from
tensor shapes (:func:`infer_ghn3_config`), and it is converted once into a folder in our layout
(``config.json`` + ``model.safetensors`` + a ``README.md`` card recording the source file's repo,
revision and sha256), under a file lock, so that later loads read only safetensors.
:func:`fetch_and_convert_ghn3` is the whole path for one of the four names in :data:`GHN3_WEIGHTS`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import constants, hf_hub_download

from .ghn.ghn3 import GHN3
from .safe_pickle import load_state_dict_pickle

GHN3_REPO = "SamsungSAILMontreal/ghn3"
_LAYER_NORM1 = re.compile(r"^gnn\.(\d+)\.ln1\.weight$")
_TOP_LEVEL_EMBEDDINGS = ("centrality_embed_in", "centrality_embed_out", "input_dist_embed")


@dataclass(frozen=True)
class GHN3Weights:
    """One published GHN-3 file.

    Attributes:
        repo_id, filename: where it is on the Hub.
        revision: branch or commit (``"main"`` until a commit is pinned).
        size: download size as the reference README/Hub list it (``None`` where not found).
        resnet50_top1: published ImageNet top-1 (%) of ResNet-50 with predicted parameters and no
            training (``ghn3_results.json`` of the reference repository), where published.
    """

    repo_id: str
    filename: str
    revision: str
    size: str | None
    resnet50_top1: float | None


GHN3_WEIGHTS: dict[str, GHN3Weights] = {
    "ghn3-t": GHN3Weights(GHN3_REPO, "ghn3tm8.pt", "main", "27 MB", 10.442),
    "ghn3-s": GHN3Weights(GHN3_REPO, "ghn3sm8.pt", "main", None, None),
    "ghn3-l": GHN3Weights(GHN3_REPO, "ghn3lm8.pt", "main", "859 MB", None),
    "ghn3-xl": GHN3Weights(GHN3_REPO, "ghn3xlm16.pt", "main", "2.5 GB", 19.996),
}
# For comparison, from the same file: ResNet-50 top-1 with GHN-2 (ImageNet) 1.080%; after one epoch
# of SGD, 43.69% from GHN-3-XL's parameters against 18.19% from a random initialisation.


class GHN3ConfigError(ValueError):
    """A state dict does not have the layout of a GHN-3."""


def move_top_level_embeddings(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference also stores the three graph embeddings at top level; they belong to ``gnn.0``."""
    return {(f"gnn.0.{k}" if k.split(".")[0] in _TOP_LEVEL_EMBEDDINGS else k): v for k, v in state.items()}


def infer_ghn3_config(state: dict[str, torch.Tensor]) -> dict:
    """A GHN-3 config from the shapes of its state dict alone.

    hid = width of ``embed.weight``; layers = number of ``gnn.<i>.ln1.weight``; heads = rows of
    ``gnn.0.attn.proj_e.2.weight``; max_shape = (c, c, S, S) with c*c = rows of
    ``decoder.conv.2.weight`` and S*S*4*hid = rows of ``decoder.fc.0.weight``; num_classes = rows
    of ``decoder.class_layer_predictor.1.weight``.

    Raises:
        GHN3ConfigError: naming the missing or inconsistent tensor.
    """
    state = move_top_level_embeddings(state)
    if any(k.startswith("gnn.gru.") for k in state):
        raise GHN3ConfigError("this state dict is a GHN-2 (it has gnn.gru.*): load it as ghninit.GHN2")
    needed = ("embed.weight", "decoder.conv.2.weight", "decoder.fc.0.weight", "decoder.class_layer_predictor.1.weight",
              "gnn.0.attn.proj_e.2.weight")  # fmt: skip
    missing = [k for k in needed if k not in state]
    if missing:
        raise GHN3ConfigError(f"not a GHN-3 state dict: missing {', '.join(missing)}")
    hid = state["embed.weight"].shape[1]
    layers = sum(1 for k in state if _LAYER_NORM1.match(k))
    c = round(state["decoder.conv.2.weight"].shape[0] ** 0.5)
    s = round((state["decoder.fc.0.weight"].shape[0] / (4 * hid)) ** 0.5)
    if c * c != state["decoder.conv.2.weight"].shape[0] or s * s * 4 * hid != state["decoder.fc.0.weight"].shape[0]:
        raise GHN3ConfigError("decoder.conv.2.weight / decoder.fc.0.weight rows are not c*c / 4*hid*S*S")
    return {
        "max_shape": [c, c, s, s],
        "num_classes": state["decoder.class_layer_predictor.1.weight"].shape[0],
        "hid": hid,
        "layers": layers,
        "heads": state["gnn.0.attn.proj_e.2.weight"].shape[0],
        "weight_norm": True,
        "ve": True,
        "layernorm": "ln.weight" in state,
        "hypernet": "graphormer",
    }


def ghn3_from_state_dict(state: dict[str, torch.Tensor], config: dict | None = None) -> GHN3:
    """A :class:`GHN3` with these weights (config inferred from shapes if not given), strictly loaded."""
    state = move_top_level_embeddings(state)
    config = infer_ghn3_config(state) if config is None else config
    with torch.device("meta"):
        ghn = GHN3(**config)
    ghn.load_state_dict(state, strict=True, assign=True)
    return ghn


def state_dict_from_recipe(recipe: dict) -> dict[str, torch.Tensor]:
    """Regenerate random GHN weights from a ``*.recipe.json`` of the GHN-3 reference fixtures.

    One ``torch.Generator().manual_seed(seed)``; for each key in sorted order ``z = randn(shape)``;
    LayerNorm weights (``ln|ln1|ln2`` + ``weight``) are ``1 + 0.02 z``, other 1-D tensors
    ``0.02 z``, others ``z / sqrt(3 * shape[1])``; returned in the recipe's key order.
    """
    generator = torch.Generator().manual_seed(recipe["recipe"]["seed"])
    shapes = {key: tuple(shape) for key, shape in recipe["keys"]}
    values = {}
    for key in sorted(shapes):
        shape = shapes[key]
        z = torch.randn(shape, generator=generator, dtype=torch.float32)
        parts = key.split(".")
        if len(shape) == 1 and parts[-1] == "weight" and parts[-2] in ("ln", "ln1", "ln2"):
            values[key] = 1 + 0.02 * z
        elif len(shape) == 1:
            values[key] = 0.02 * z
        else:
            values[key] = z / math.sqrt(3 * shape[1])
    return {key: values[key] for key, _ in recipe["keys"]}


def load_ghn3_pickle(path: str | os.PathLike) -> GHN3:
    """Load a published-format GHN-3 (joblib/pickle of a bare state dict) without running its code."""
    return ghn3_from_state_dict(load_state_dict_pickle(path))


def convert_ghn3_pickle(path: str | os.PathLike, folder: str | os.PathLike, source: dict | None = None) -> Path:
    """Convert a published GHN-3 file into ``folder`` (``config.json``, ``model.safetensors``, ``README.md``).

    Args:
        path: the joblib file.
        folder: output folder (created; files are written to a temporary folder and moved in).
        source: provenance written to the card (repo, filename, revision); the sha256 of ``path``
            is always recorded.
    """
    from .hub import file_sha256

    folder = Path(folder)
    ghn = load_ghn3_pickle(path)
    provenance = {**(source or {}), "file": Path(path).name, "sha256": file_sha256(path)}
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()):
        ghn.save_pretrained(tmp)
    card = tmp / "README.md"
    text = card.read_text() if card.exists() else ""
    card.write_text(
        text + "\n\n## Conversion\nConverted by ghninit from a published GHN-3 joblib file, read with a restricted "
        "unpickler (no code from it ran):\n\n```json\n" + json.dumps(provenance, indent=2) + "\n```\n"
    )
    (tmp / "source.json").write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def default_cache_dir() -> Path:
    """Where converted GHN-3 folders go by default: ``$HF_HOME/ghninit/converted``."""
    return Path(constants.HF_HOME) / "ghninit" / "converted"


def fetch_and_convert_ghn3(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    hub_cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Download a published GHN-3 (``"ghn3-t"``, ``-s``, ``-l``, ``-xl``) and convert it once; return the folder.

    The joblib file comes through ``hf_hub_download`` (``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the
    Hub cache behave as huggingface_hub defines). The converted folder is
    ``<cache_dir>/<name>`` and is reused while its recorded sha256 matches the downloaded file.

    Args:
        name: a key of :data:`GHN3_WEIGHTS`.
        cache_dir: where converted folders go (default :func:`default_cache_dir`).
        revision: Hub revision (default: the table's).
        hub_cache_dir: huggingface_hub's cache for the download (default its own).
        force: download and convert again.
        token: Hub token.
    """
    if name not in GHN3_WEIGHTS:
        raise KeyError(f"unknown GHN-3 '{name}': expected one of {', '.join(GHN3_WEIGHTS)}")
    entry = GHN3_WEIGHTS[name]
    revision = revision or entry.revision
    path = Path(
        hf_hub_download(
            entry.repo_id, entry.filename, revision=revision, cache_dir=hub_cache_dir, force_download=force, token=token
        )
    )
    from .hub import file_sha256

    sha256 = file_sha256(path)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        recorded = folder / "source.json"
        if not force and recorded.is_file() and json.loads(recorded.read_text()).get("sha256") == sha256:
            return folder
        source = {"repo_id": entry.repo_id, "filename": entry.filename, "revision": revision}
        return convert_ghn3_pickle(path, folder, source)
