"""The published GHN-3 weights: the four files on the Hub, config inference, and their safe conversion.

The reference publishes GHN-3 as joblib pickles of a bare state dict (no config) on the Hugging
Face Hub repo ``SamsungSAILMontreal/ghn3``. :class:`HubPickle` is the source of such a file for the
name registry (:mod:`ghninit.zoo.registry`, one :class:`~ghninit.zoo.registry.ConvertedSource`): it
downloads the file with ``hf_hub_download``, reads it with the restricted unpickler of
:mod:`ghninit.zoo.safe_pickle` (no code from it runs) and infers its config from tensor shapes
(:func:`infer_ghn3_config`); :func:`ghninit.zoo.cache.fetch_convert_store` then stores it once, under
the same file lock and in the same cache as the official GHN-2 files, so later loads read only
safetensors. :data:`GHN3_WEIGHTS` lists the four published files with their sizes and figures.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import GHNLoadError, SourceUnavailable
from ..ghn.ghn3 import GHN3
from .safe_pickle import load_state_dict_pickle

GHN3_REPO = "SamsungSAILMontreal/ghn3"
GHN3_PAPER = (
    "Boris Knyazev, Doha Hwang, Simon Lacoste-Julien. Can We Scale Transformers to Predict Parameters of "
    "Diverse ImageNet Models? ICML 2023. https://arxiv.org/abs/2303.04143"
)
_LAYER_NORM1 = re.compile(r"^gnn\.(\d+)\.ln1\.weight$")
_TOP_LEVEL_EMBEDDINGS = ("centrality_embed_in", "centrality_embed_out", "input_dist_embed")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubPickle:
    """A GHN-3 joblib file (a pickled state dict) in a Hugging Face Hub repo: a converted source.

    Attributes:
        repo_id, filename: where it is on the Hub (``HF_ENDPOINT`` applies, as for any Hub download).
        revision: a 40-hex commit once one is known, so that the file is fixed; until then ``"main"``
            (the model card says so, and records the sha256 of the file that was converted).
        sha256: the file's sha256, checked after download when set.
        size: download size as the reference README / Hub list it (``None`` where not found).
        license: the license of the reference repository, recorded in the model card.
    """

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: str | None = None
    size: str | None = None
    license: str = "MIT"

    kind = "hub-pickle"

    @property
    def cache_key(self) -> str:
        """The converted copy's folder name in the cache: changes with the revision and the pinned sha256."""
        return f"hub-{self.revision.replace('/', '--')}" + (f"-{self.sha256[:16]}" if self.sha256 else "")

    @property
    def pinned(self) -> bool:
        """Whether the revision is a commit (a branch such as ``main`` can move)."""
        return bool(_COMMIT.match(self.revision))

    def url(self) -> str:
        """The file's download URL (``HF_ENDPOINT`` as huggingface_hub read it)."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, self.filename, revision=self.revision)

    def describe(self) -> str:
        """One line saying where this source is."""
        pin = "" if self.pinned else " (a branch: no commit pinned)"
        return f"Hub file {self.filename} of {self.repo_id} at revision {self.revision}{pin}, from {self.url()}"

    def provenance(self) -> dict:
        """What the model card and ``provenance.json`` record (the cache adds the file's sha256)."""
        return {
            "source": "Hub file: a joblib pickle of a state dict, read with a restricted unpickler",
            "repo": f"https://huggingface.co/{self.repo_id}",
            "revision": self.revision
            + ("" if self.pinned else " (a branch, not a pinned commit: source_sha256 identifies the file)"),
            "path": self.filename,
            "source_file": self.filename,
            **({"sha256_pinned": self.sha256} if self.sha256 else {}),
            "url": self.url(),
            "license": self.license,
            "license_source": f"https://github.com/{GHN3_REPO} (file LICENSE)",
            "paper": GHN3_PAPER,
        }

    def fetch(self, work: Path, token: str | bool | None = None) -> Path:
        """Download the file into ``work`` with ``hf_hub_download`` (and check its sha256 when pinned).

        ``token`` is passed to ``hf_hub_download`` (None: huggingface_hub's own, e.g. ``HF_TOKEN``). The
        file's metadata is first asked for with ghninit's timeout and retries
        (:func:`~ghninit.zoo.download.probe_hub_file`); the download itself follows huggingface_hub's
        ``HF_HUB_DOWNLOAD_TIMEOUT`` and resumes what an interrupted call left in ``work``.

        Raises:
            SourceUnavailable: the Hub, the repo, the revision or the file could not be reached.
            GHNLoadError: the file does not hash to :attr:`sha256`; the download is deleted.
        """
        from huggingface_hub import hf_hub_download

        from .cache import file_sha256, is_offline
        from .download import probe_hub_file

        if not is_offline():
            probe_hub_file(self.url(), token=token)  # a stalled endpoint ends within GHNINIT_DOWNLOAD_TIMEOUT
        try:
            path = Path(hf_hub_download(self.repo_id, self.filename, revision=self.revision, local_dir=work, token=token))
        except Exception as err:  # huggingface_hub raises many types (HTTP, connection, missing entry)
            first = (str(err).strip().splitlines() or [""])[0]
            raise SourceUnavailable(f"downloading {self.url()} failed ({type(err).__name__}: {first})") from err
        actual = file_sha256(path) if self.sha256 else None
        if actual is not None and actual != self.sha256:
            path.unlink()
            raise GHNLoadError(
                f"{self.filename} downloaded from {self.url()} is not the pinned file: its sha256 is {actual}, "
                f"expected {self.sha256}. The download was deleted; nothing was loaded or cached. Fix: retry; if it "
                "persists, the Hub or the mirror set in HF_ENDPOINT serves a different file."
            )
        return path

    def convert(self, path: Path) -> GHN3:
        """The GHN-3 in the downloaded file, read with the restricted unpickler (no code from it runs)."""
        try:
            return load_ghn3_pickle(path)
        except (pickle.UnpicklingError, ValueError, RuntimeError) as err:
            raise GHNLoadError(
                f"{self.filename} of {self.repo_id} (revision {self.revision}): not loadable as a GHN-3 state dict "
                f"({type(err).__name__}: {err}). Nothing was loaded or cached."
            ) from err


@dataclass(frozen=True)
class GHN3Weights:
    """One published GHN-3: its file on the Hub, its architecture and its published figure.

    Attributes:
        source: where the file is.
        hid, heads: width and attention heads (read from the file's shapes on load).
        layers: Graphormer layers where the published file size pins them (``None`` for S).
        resnet50_top1: published ImageNet top-1 (%) of ResNet-50 with predicted parameters and no
            training (``ghn3_results.json`` of the reference repository), where published.
    """

    source: HubPickle
    hid: int
    heads: int
    layers: int | None
    resnet50_top1: float | None

    def matches(self, config: dict) -> bool:
        """Whether a GHN-3 config has this architecture (hid, heads, and layers where known)."""
        return (
            config.get("hid") == self.hid
            and config.get("heads") == self.heads
            and (self.layers is None or config.get("layers") == self.layers)
        )

    def config(self) -> dict | None:
        """The config of the published file (as :func:`infer_ghn3_config` reads it), or None if not all known."""
        if self.layers is None:
            return None
        return {
            "max_shape": [self.hid, self.hid, 16, 16],
            "num_classes": 1000,
            "hid": self.hid,
            "layers": self.layers,
            "heads": self.heads,
            "weight_norm": True,
            "ve": True,
            "layernorm": True,
            "hypernet": "graphormer",
        }


GHN3_WEIGHTS: dict[str, GHN3Weights] = {
    "ghn3-t": GHN3Weights(HubPickle(GHN3_REPO, "ghn3tm8.pt", size="27 MB"), 64, 8, 3, 10.442),
    "ghn3-s": GHN3Weights(HubPickle(GHN3_REPO, "ghn3sm8.pt"), 128, 16, None, None),
    "ghn3-l": GHN3Weights(HubPickle(GHN3_REPO, "ghn3lm8.pt", size="859 MB"), 256, 16, 12, None),
    "ghn3-xl": GHN3Weights(HubPickle(GHN3_REPO, "ghn3xlm16.pt", size="2.5 GB"), 384, 16, 24, 19.996),
}
# For comparison, from the same file: ResNet-50 top-1 with GHN-2 (ImageNet) 1.080%; after one epoch
# of SGD, 43.69% from GHN-3-XL's parameters against 18.19% from a random initialisation.
GHN2_RESNET50_TOP1 = 1.080


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
