"""Deterministic generator of the DeepNets-1M splits.

Architecture ``i`` of a split is a pure function of ``(split, i)``: its random numbers come from a
``numpy`` generator seeded with ``(split seed, i)``, and rejected candidates are redrawn from the
same stream. The million TRAIN architectures therefore need no storage, and any process (or rank)
can produce any architecture independently.

The sampling rules follow the paper's appendix A.1/A.2 and the reference generator:

- cells: 4-18 (DEEP: 10-36); intermediate nodes per cell 1-4, at most 2 for networks deeper than a
  random threshold of 7-10 cells (DEEP: 18); DENSE: 2-10 nodes, at most 6 for deep networks;
- operations uniform over :data:`~.genotypes.OPERATIONS` (``none`` only if a cell has more than
  one node), half of the networks with a parameter-free reduction cell, half with some
  intermediate nodes dropped from the output concatenation;
- rejected: squeeze-and-excitation without any convolution, more than one squeeze-and-excitation
  or more than one 5x5/7x7 dense convolution per cell, cells without any learnable operation,
  networks whose output does not depend on the input, and networks above 10M parameters (100M
  for DEEP and DENSE) on CIFAR-10 or ImageNet;
- first-conv kernel 3/5/7, channel multiplier 1/2, stem CIFAR- or ImageNet-style (ViT stem when
  the cells have self-attention), 1x1 preprocessing (always with several outputs or channel
  multiplier 2), global pooling unless 10% VGG-style heads, 1-2 fully-connected layers;
- BatchNorm everywhere except in shallow (at most min + 1 cells), small networks, half of which
  have no BatchNorm (BN-FREE: none has BatchNorm);
- channels: 32 for evaluation splits (WIDE: the TEST architectures with 4x the channels, 128);
  TRAIN samples 16-128 channels and a 64-512 hidden head size, smaller for larger networks.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .genotypes import LARGE_CONVS, Genotype, sample_genotype
from .net import Network

SPLITS: tuple[str, ...] = ("train", "val", "test", "wide", "deep", "dense", "bnfree")
#: Channels of the evaluation splits, and the WIDE multiplier (CIFAR-10; the paper uses 2x on ImageNet).
EVAL_CHANNELS = 32
WIDE_FACTOR = 4
TRAIN_CHANNELS = tuple(range(16, 129, 16))
TRAIN_FC_DIMS = tuple(range(64, 513, 64))
DEFAULT_FC_DIM = 256


@dataclass(frozen=True)
class SplitRules:
    """Sampling ranges of one split."""

    min_cells: int = 4
    max_cells: int = 18
    deep_thresholds: tuple[int, ...] = (7, 8, 9, 10)
    min_steps: int = 1
    medium_steps: int = 2
    max_steps: int = 4
    max_params: int = 10**7
    bn_free: bool = False


RULES: dict[str, SplitRules] = {
    "train": SplitRules(),
    "val": SplitRules(),
    "test": SplitRules(),
    "wide": SplitRules(),
    "bnfree": SplitRules(bn_free=True),
    "deep": SplitRules(min_cells=10, max_cells=36, deep_thresholds=(18,), max_params=10**8),
    "dense": SplitRules(min_steps=2, medium_steps=6, max_steps=10, max_params=10**8),
}


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to build one network of the space (see :class:`~.net.Network`)."""

    split: str
    index: int
    genotype: Genotype
    n_cells: int
    channels: int
    stem: str
    stem_pool: bool
    kernel: int
    norm: str | None
    preproc: bool
    channel_mult: int
    glob_avg: bool
    fc_layers: int
    fc_dim: int
    params_cifar10: int  # parameters with 32 channels, fc_dim 256, 10 classes, 32x32 input

    def build(
        self, num_classes: int = 10, image_size: int = 32, norm: str | None | bool = True, device=None
    ) -> Network:
        """Instantiate the network.

        Args:
            num_classes: outputs of the classifier.
            image_size: 32 (CIFAR-10 strides) or 224 (ImageNet strides).
            norm: ``True`` keeps the spec's norm (``"bn"``: batch statistics, as during GHN
                training and the paper's evaluation); a string or None overrides it where the
                spec has BatchNorm (e.g. ``"bn-track"`` to calibrate running statistics).
            device: where to allocate (``"meta"`` builds without memory or initialisation, e.g. to
                count parameters or to run with predicted parameters through ``functional_call``).
        """
        use_norm = self.norm if norm is True or self.norm is None else norm
        meta = device is not None and torch.device(device).type == "meta"
        with torch.device(device) if device is not None else _nullcontext(), _skip_init() if meta else _nullcontext():
            return Network(
                self.genotype,
                num_classes=num_classes,
                n_cells=self.n_cells,
                channels=self.channels,
                image_size=image_size,
                stem=self.stem,  # type: ignore[arg-type]
                stem_pool=self.stem_pool,
                kernel=self.kernel,
                norm=use_norm,
                preproc=self.preproc,
                channel_mult=self.channel_mult,
                glob_avg=self.glob_avg,
                fc_layers=self.fc_layers,
                fc_dim=self.fc_dim,
            )

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        d = asdict(self)
        d["genotype"] = self.genotype.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        return cls(**{**d, "genotype": Genotype.from_dict(d["genotype"])})

    @property
    def has_bn(self) -> bool:
        return self.norm is not None


class _skip_init:
    """Make ``reset_parameters`` of the layers used here a no-op (meta tensors hold no values anyway)."""

    _classes = (
        torch.nn.modules.conv._ConvNd,
        torch.nn.Linear,
        torch.nn.modules.batchnorm._NormBase,
        torch.nn.LayerNorm,
    )

    def __enter__(self):
        self._saved = [c.__dict__["reset_parameters"] for c in self._classes]
        for c in self._classes:
            c.reset_parameters = _no_reset
        return self

    def __exit__(self, *exc):
        for c, f in zip(self._classes, self._saved):
            c.reset_parameters = f
        return False


def _no_reset(self) -> None:
    return None


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def split_seed(split: str) -> int:
    """A fixed 32-bit seed per split name."""
    return zlib.crc32(f"deepnets1m/{split}".encode())


def count_parameters(net: torch.nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in net.parameters())


def _candidate(rng: np.random.Generator, rules: SplitRules, split: str, index: int) -> ArchSpec | None:
    n_cells = int(rng.integers(rules.min_cells, rules.max_cells + 1))
    deep = int(rng.choice(rules.deep_thresholds))
    steps = int(rng.integers(rules.min_steps, (rules.max_steps if n_cells <= deep else rules.medium_steps) + 1))
    genotype = sample_genotype(
        rng,
        steps,
        only_pool=bool(rng.random() > 0.5),
        allow_none=steps > 1,
        drop_concat=bool(rng.random() > 0.5) if steps > 1 else False,
        allow_msa=True,
    )
    kernel = int(rng.choice([3, 5, 7]))
    normal_ops = [op for op, _ in genotype.normal]
    reduce_ops = [op for op, _ in genotype.reduce]
    ops = normal_ops + reduce_ops
    is_vit = "msa" in ops
    is_cse = "cse" in ops
    is_conv = any("conv" in op for op in ops)
    if is_cse and not is_conv:
        return None
    if normal_ops.count("cse") > 1 or reduce_ops.count("cse") > 1:
        return None  # several SE gates per cell make GHN training unstable
    if sum(op in LARGE_CONVS for op in normal_ops) > 1 or sum(op in LARGE_CONVS for op in reduce_ops) > 1:
        return None  # dense large convolutions are memory hungry
    if not (is_cse or is_vit or is_conv):
        return None  # nothing learnable in the cells
    channel_mult = int(rng.choice([1, 2]))
    if steps > 1 or channel_mult > 1:
        preproc = True
    else:
        preproc = bool(not is_vit or rng.random() > 0.8)
    glob_avg = bool(is_vit or n_cells > deep or rng.random() > 0.1)
    if rules.bn_free:
        norm = None
    elif n_cells <= rules.min_cells + 1 and steps <= rules.medium_steps:
        norm = "bn" if rng.random() > 0.5 else None
    else:
        norm = "bn"
    stem_type = "cifar" if rng.random() > 0.5 else "imagenet"
    stem_pool = bool(stem_type == "cifar" and rng.random() > 0.5)
    fc_layers = int(rng.integers(1, 3))
    spec = ArchSpec(
        split=split,
        index=index,
        genotype=genotype,
        n_cells=n_cells,
        channels=EVAL_CHANNELS,
        stem="vit" if is_vit else stem_type,
        stem_pool=stem_pool and not is_vit,
        kernel=kernel,
        norm=norm,
        preproc=preproc,
        channel_mult=channel_mult,
        glob_avg=glob_avg,
        fc_layers=fc_layers,
        fc_dim=DEFAULT_FC_DIM,
        params_cifar10=0,
    )
    try:
        net = spec.build(10, 32, device="meta")
    except ValueError:  # a cell with only dead paths: the output would not depend on the input
        return None
    n_cifar = count_parameters(net)
    if n_cifar > rules.max_params:
        return None
    if imagenet_parameters_bound(spec, net) > rules.max_params:  # build the ImageNet net only if needed
        if count_parameters(spec.build(1000, 224, device="meta")) > rules.max_params:
            return None
    return replace(spec, params_cifar10=n_cifar)


def imagenet_parameters_bound(spec: ArchSpec, cifar_net: Network) -> int | float:
    """An upper bound on the parameters of ``spec`` built for ImageNet (1000 classes, 224x224).

    With global pooling, only the classifier (1000 instead of 10 outputs) and the ViT stem
    (16x16 patches, a 14x14 positional encoding) can grow; the CIFAR-style stem only shrinks (C
    instead of 3C channels) and cells do not depend on the resolution. VGG-style heads scale with
    the final map, so they get no bound (infinity: count exactly).
    """
    if not spec.glob_avg:
        return float("inf")
    last = cifar_net.classifier[-1]
    c = spec.channels
    return count_parameters(cifar_net) + 990 * (last.in_features + 1) + 3 * c * (16 * 16) + c * 14 * 14


def _train_width(rng: np.random.Generator, spec: ArchSpec) -> ArchSpec:
    """TRAIN samples channels and head size, keeping large networks narrow (as the reference loader)."""
    params_m = spec.params_cifar10 / 1e6
    dense_conv = any(op in LARGE_CONVS for op in spec.genotype.ops)
    fc = TRAIN_FC_DIMS[int(rng.integers(4))]
    if params_m > 0.8 or not spec.glob_avg or dense_conv or spec.n_cells > 12:
        c = TRAIN_CHANNELS[0]
    elif params_m > 0.4 or spec.n_cells > 10:
        c = TRAIN_CHANNELS[int(rng.integers(2))]
    elif params_m > 0.2 or spec.n_cells > 8:
        c = TRAIN_CHANNELS[int(rng.integers(3))]
    else:
        c = TRAIN_CHANNELS[int(rng.integers(len(TRAIN_CHANNELS)))]
        if c <= 64:
            fc = TRAIN_FC_DIMS[int(rng.integers(len(TRAIN_FC_DIMS)))]
    return replace(spec, channels=c, fc_dim=fc)


def generate(split: str, index: int) -> ArchSpec:
    """Architecture ``index`` of ``split`` (one of :data:`SPLITS`), a pure function of both.

    WIDE architecture ``i`` is TEST architecture ``i`` with 4x the channels.
    """
    split = split.lower().replace("-", "").replace("_", "")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"architecture index must be >= 0, got {index}")
    if split == "wide":
        base = generate("test", index)
        return replace(base, split="wide", channels=base.channels * WIDE_FACTOR)
    rng = np.random.default_rng([split_seed(split), index])
    rules = RULES[split]
    while True:
        spec = _candidate(rng, rules, split, index)
        if spec is not None:
            break
    if split == "train":
        spec = _train_width(rng, spec)
    return spec


def iterate(split: str, start: int = 0, stop: int | None = None) -> Iterator[ArchSpec]:
    """Architectures ``start, start + 1, ...`` (forever if ``stop`` is None)."""
    i = start
    while stop is None or i < stop:
        yield generate(split, i)
        i += 1


def describe(spec: ArchSpec) -> str:
    """One-line summary of an architecture."""
    ops = sorted(set(spec.genotype.ops) - {"none"})
    return (
        f"{spec.split}[{spec.index}]: {spec.n_cells} cells x {spec.genotype.steps} nodes, C={spec.channels}, "
        f"stem={spec.stem}{'+pool' if spec.stem_pool else ''} k{spec.kernel}, norm={spec.norm}, "
        f"preproc={spec.preproc}, mult={spec.channel_mult}, head={'gap' if spec.glob_avg else 'vgg'}x{spec.fc_layers}, "
        f"{spec.params_cifar10 / 1e6:.2f}M params, ops={','.join(ops)}"
    )
