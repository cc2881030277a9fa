"""The table of published GHNs that load by name, and where each one comes from.

A :class:`KnownGHN` names a GHN (plus aliases), its architecture variant and training data set,
the accuracy its authors published, and an ordered tuple of sources. A source is a small frozen
dataclass: :class:`HubWeights` (a Hugging Face Hub repo already in ghninit's layout, used only once
pinned), :class:`~ghninit.zoo.official.OfficialFile` (a checkpoint file pinned by commit, path and
git blob SHA-1, downloaded, verified and converted into the local cache) or
:class:`~ghninit.zoo.ghn3_weights.HubPickle` (a published GHN-3 joblib file on the Hub, read with a
restricted unpickler and converted into the same cache). Adding a GHN is one
:class:`KnownGHN` line; adding a kind of source is one dataclass of the :class:`ConvertedSource`
protocol (``fetch`` and ``convert`` methods; see :mod:`ghninit.zoo.official`). Tests and forks add
entries with :func:`register_ghn` instead of weakening any check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..ghn.presets import ARCH_KEYS, PRESETS, ghn2_kwargs
from .ghn3_weights import GHN2_RESNET50_TOP1, GHN3_PAPER, GHN3_WEIGHTS
from .official import PPUDA_COMMIT, PPUDA_REPO, OfficialFile


@dataclass(frozen=True)
class HubWeights:
    """A GHN published on the Hub in ghninit's layout (``config.json`` + ``model.safetensors``).

    Attributes:
        repo_id: Hub repo.
        revision: the pinned revision; a 40-hex commit sha once published, so that downloads are
            reproducible and a cached copy is used without any request.
        sha256: sha256 of ``model.safetensors`` at that revision, checked on every load when set.
        source: the official checkpoint it was converted from.
    """

    repo_id: str
    revision: str
    sha256: str | None
    source: str

    kind = "hub"

    def describe(self) -> str:
        """One line saying where this source is."""
        return f"Hub repo {self.repo_id} at revision {self.revision}"


@runtime_checkable
class ConvertedSource(Protocol):
    """What a source of a GHN published in another form provides; :class:`~ghninit.zoo.official.OfficialFile` is one.

    ``ghninit.zoo.hub`` gives it to :func:`ghninit.zoo.cache.fetch_convert_store`, which keeps the converted
    copy under ``<cache>/ghns/<name>/<cache_key>``; a new kind of source (e.g. a pickle on the Hub,
    read with a restricted unpickler) is one such dataclass, and nothing else changes.
    """

    kind: str

    @property
    def cache_key(self) -> str:
        """Folder name of the converted copy; must change whenever the pinned file does."""
        ...

    def describe(self) -> str:
        """One line saying where this source is (used in errors and ``list_ghns``)."""
        ...

    def provenance(self) -> dict:
        """What the model card and ``provenance.json`` record about the source."""
        ...

    def fetch(self, work: Path, token: str | bool | None = None) -> Path:
        """Download into the empty folder ``work`` and verify against the pinned hash; returns the file.
        ``token`` is the caller's Hub token (sources not on the Hub ignore it).
        Raises :class:`~ghninit.errors.SourceUnavailable` when unreachable, ``GHNLoadError`` on a mismatch."""
        ...

    def convert(self, path: Path) -> torch.nn.Module:
        """Read the verified file (never unpickling code) into a GHN module with ``config``/``save_pretrained``."""
        ...


Source = HubWeights | ConvertedSource


@dataclass(frozen=True)
class Published:
    """Accuracy of networks whose parameters are all predicted by a GHN, as its authors published it.

    Attributes:
        resnet50: on ResNet-50 (an architecture unseen in training), as printed by the authors.
        best: on the best architecture of the DeepNets-1M TEST split, as printed (None if not published).
        best_index: that architecture's index in the TEST split.
        where: where the figures were read.
        metric: what the figures measure, when not the data set's usual metric (e.g. top-1 on ImageNet).
        comparison: another GHN's published figure on the same model, for context.
    """

    resnet50: str
    best: str | None
    best_index: int | None
    where: str
    metric: str | None = None
    comparison: str = ""

    def summary(self, metric: str) -> str:
        """e.g. ``"top-5 % on ImageNet: ResNet-50 5.3, best TEST net (#85) 48.3"``; ``metric`` is the data
        set's, used unless the figures say what they measure."""
        best = f", best TEST net (#{self.best_index}) {self.best}" if self.best is not None else ""
        comparison = f" ({self.comparison})" if self.comparison else ""
        return f"{self.metric or metric}: ResNet-50 {self.resnet50}{best}{comparison}"


@dataclass(frozen=True)
class Dataset:
    """A data set GHNs are trained on: what the cards and ``list_ghns`` say about it."""

    label: str
    num_classes: int
    hf_dataset: str
    images: str
    metric: str


@dataclass(frozen=True)
class Variant:
    """An architecture variant of the GHN (matched against a checkpoint's own ``config``)."""

    label: str
    description: str


DATASETS: dict[str, Dataset] = {
    "imagenet": Dataset(
        "ImageNet", 1000, "imagenet-1k", "ImageNet (ILSVRC 2012) training images, 1000 classes", "top-5 % on ImageNet"
    ),
    "cifar10": Dataset(
        "CIFAR-10", 10, "cifar10", "CIFAR-10 training images (32x32, 10 classes)", "top-1 % on CIFAR-10"
    ),
}

VARIANTS: dict[str, Variant] = {
    "ghn2": Variant(
        "GHN-2",
        "a gated graph network with virtual edges, normalised predictions and layer norm, trained with "
        "8 architectures per batch",
    ),
    "ghn1": Variant(
        "GHN-1",
        "the graph hypernetwork of Zhang et al. (ICLR 2019) as the paper's baseline: a gated graph network "
        "without virtual edges, prediction normalisation or layer norm, one architecture per batch",
    ),
    "mlp": Variant(
        "MLP",
        "the paper's baseline without message passing: every node of the graph goes through the same MLP, "
        "with GHN-2's normalisation and layer norm",
    ),
}
for _name, _weights in GHN3_WEIGHTS.items():
    VARIANTS[_name] = Variant(
        _name.upper().replace("GHN3", "GHN-3"),
        f"Graphormer layers instead of GHN-2's gated graph network (hidden width {_weights.hid}, "
        f"{_weights.heads} heads) and a decoder that reads centred windows",
    )

# Read in the pinned commit's README.md, section "Available GHNs", figure for figure.
_README = f"{PPUDA_REPO} README.md at commit {PPUDA_COMMIT}, table 'Available GHNs'"


@dataclass(frozen=True)
class KnownGHN:
    """A GHN that loads by name.

    Attributes:
        name: canonical name, e.g. ``ghn2-imagenet`` (also the folder name in the cache).
        variant: a key of :data:`VARIANTS`.
        dataset: a key of :data:`DATASETS`.
        sources: tried in order; a source that cannot provide the GHN *now* (offline, unreachable,
            not published) passes to the next, a source whose file fails verification stops.
        aliases: other names, e.g. ``imagenet``.
        published: the authors' published accuracy, if any.
        paper: how to cite it.
    """

    name: str
    variant: str
    dataset: str
    sources: tuple[Source, ...]
    aliases: tuple[str, ...] = ()
    published: Published | None = None
    paper: str = (
        "Boris Knyazev, Michal Drozdzal, Graham W. Taylor, Adriana Romero-Soriano. Parameter Prediction for "
        "Unseen Deep Architectures. NeurIPS 2021. https://arxiv.org/abs/2110.13100"
    )

    @property
    def title(self) -> str:
        """e.g. ``"GHN-2 trained on ImageNet"``."""
        return f"{VARIANTS[self.variant].label} trained on {DATASETS[self.dataset].label}"

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name, then the aliases."""
        return (self.name, *self.aliases)


def _ppuda(name: str, variant: str, dataset: str, blob_sha1: str, published: tuple, aliases=()) -> KnownGHN:
    resnet50, best, index = published
    path = f"checkpoints/{name.replace('-', '_')}.pt"
    return KnownGHN(
        name,
        variant,
        dataset,
        (OfficialFile(path, blob_sha1),),
        aliases,
        Published(resnet50, best, index, _README),
    )


# Name -> entry, aliases included (so that ``name in KNOWN_GHNS`` works for every name).
KNOWN_GHNS: dict[str, KnownGHN] = {}


def register_ghn(entry: KnownGHN, *, replace: bool = False) -> KnownGHN:
    """Make ``entry`` (and its aliases) loadable by name.

    Args:
        entry: the GHN and its sources.
        replace: allow replacing an entry of the same name (its other names are dropped too).

    Raises:
        ValueError: a name is taken and ``replace`` is False, or the entry is unusable.
    """
    if not entry.sources:
        raise ValueError(f"{entry.name}: a known GHN needs at least one source")
    if entry.variant not in VARIANTS or entry.dataset not in DATASETS:
        raise ValueError(
            f"{entry.name}: variant {entry.variant!r} / dataset {entry.dataset!r} not in "
            f"{sorted(VARIANTS)} / {sorted(DATASETS)}; add them to ghninit.zoo.registry first"
        )
    for source in entry.sources:
        if not isinstance(source, HubWeights | ConvertedSource):
            raise ValueError(
                f"{entry.name}: source {source!r} is neither a HubWeights nor a ConvertedSource (kind, cache_key, "
                "describe, provenance, fetch, convert)"
            )
    for name in entry.names:
        old = KNOWN_GHNS.get(name)
        if old is not None and not replace:
            raise ValueError(f"'{name}' is already a known GHN ({old.name}); pass replace=True to replace it")
        if old is not None:
            for other in old.names:
                KNOWN_GHNS.pop(other, None)
    for name in entry.names:
        KNOWN_GHNS[name] = entry
    return entry


def known_ghns() -> list[KnownGHN]:
    """Every known GHN once, in table order."""
    return list({id(e): e for e in KNOWN_GHNS.values()}.values())


# The five official checkpoints of the reference (github.com/facebookresearch/ppuda, MIT), pinned
# by the git blob SHA-1 of each file in the commit's tree. Accuracies: ResNet-50, best TEST
# architecture and its index, as the reference README prints them.
for _entry in (
    _ppuda("ghn2-imagenet", "ghn2", "imagenet", "7b5d6733e9fdf0069bc6186cad3a0b1b54fda68d", ("5.3", "48.3", 85),
           ("imagenet",)),
    _ppuda("ghn2-cifar10", "ghn2", "cifar10", "4f290e0fad1b73066eeabb50be52e0c377d0b15b", ("58.6", "77.1", 210),
           ("cifar10",)),
    _ppuda("ghn1-imagenet", "ghn1", "imagenet", "985ebeb350c4ae79e0553d88c07d986fa69c227b", ("6.9", "32.1", 295)),
    _ppuda("ghn1-cifar10", "ghn1", "cifar10", "0c97a283aefc0445dd357c08f1b36698149b8013", ("19.2", "59.9", 179)),
    _ppuda("mlp-cifar10", "mlp", "cifar10", "3a987c98b437fd2dfc603668a846f2b632ed28a3", ("17.7", "60.2", 167)),
):  # fmt: skip
    register_ghn(_entry)

# The four published GHN-3 (Hub repo SamsungSAILMontreal/ghn3, MIT); ResNet-50 top-1 from the
# reference's ghn3_results.json, shipped with its source as ghninit/zoo/ghn3_published.json.
_GHN3_FIGURES = "ghn3_results.json of SamsungSAILMontreal/ghn3 (shipped as ghninit/zoo/ghn3_published.json)"
for _name, _weights in GHN3_WEIGHTS.items():
    register_ghn(
        KnownGHN(
            _name,
            _name,
            "imagenet",
            (_weights.source,),
            published=Published(
                f"{_weights.resnet50_top1:.1f}",
                None,
                None,
                _GHN3_FIGURES,
                metric="top-1 % on ImageNet",
                comparison=f"GHN-2 on ImageNet: {GHN2_RESNET50_TOP1:.1f}",
            )
            if _weights.resnet50_top1 is not None
            else None,
            paper=GHN3_PAPER,
        )
    )




def variant_of(config: dict) -> str | None:
    """The variant (key of :data:`VARIANTS`) a GHN config describes, by the training presets or the published
    GHN-3 sizes; None if none fits."""
    from ..ghn.ghn3 import is_ghn3_config

    if is_ghn3_config(config):
        return next((name for name, weights in GHN3_WEIGHTS.items() if weights.matches(config)), None)
    for name, preset in PRESETS.items():
        if all(config.get(key) == preset[key] for key in ARCH_KEYS):
            return name
    return None


def expected_config(entry: KnownGHN) -> dict | None:
    """The GHN config the reference trains for ``entry``'s variant and data set (before any download);
    None where it is not known (GHN-3-S's layer count)."""
    if entry.variant in GHN3_WEIGHTS:
        return GHN3_WEIGHTS[entry.variant].config()
    return ghn2_kwargs(entry.variant, entry.dataset)
