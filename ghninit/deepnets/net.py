"""The network of the DeepNets-1M space: a stem, a stack of cells, and a classification head.

The layout follows DARTS as extended in "Parameter Prediction for Unseen Deep Architectures"
(appendix A.1): reduction cells sit at 1/3 and 2/3 of the depth and multiply the channels by
``channel_mult`` (1 or 2); each cell reads the outputs of the two previous cells, optionally
through 1x1 "preprocessing" convolutions; the stem is CIFAR-style (one conv), ImageNet-style (two
strided conv blocks, as in DARTS) or a ViT-style patch embedding with a positional encoding; the
head is global average pooling or a VGG-style stack of fully-connected layers.

Operations whose input is dead (the zero operation, or a state that only zero operations feed),
and whole cells whose output no later cell reads, are not built at all, so every parameter of a
network lies on the path from input to output and the GHN graph covers all of them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from .genotypes import DARTS, Genotype, parse_operation
from .ops import FactorizedReduce, PosEnc, ReLUConvBN, Subsample, make_operation, norm_layer

Stem = Literal["cifar", "imagenet", "vit"]


def _reduces(cell: int, n_cells: int) -> bool:
    return cell > 0 and cell in (n_cells // 3, 2 * n_cells // 3)


def cell_liveness(
    edges: tuple[tuple[str, int], ...], concat: tuple[int, ...]
) -> tuple[list[bool], list[bool], frozenset[int]]:
    """Which states of a cell carry a signal, which states the output needs, which edges are used.

    A state is live if some non-zero operation reads a live state into it (the two inputs are
    live). A state is needed if the output concatenation reads it through live operations.
    Returns ``(live, needed, used edge indices)``; ``needed[0]``/``needed[1]`` say whether the
    cell reads its two inputs at all.
    """
    steps = len(edges) // 2
    live = [True, True]
    for k in range(steps):
        live.append(any(edges[e][0] != "none" and live[edges[e][1]] for e in (2 * k, 2 * k + 1)))
    needed = [False] * (steps + 2)
    for i in concat:
        needed[i] = live[i]
    used: set[int] = set()
    for k in reversed(range(steps)):
        if needed[k + 2]:
            for e in (2 * k, 2 * k + 1):
                op, src = edges[e]
                if op != "none" and live[src]:
                    needed[src] = True
                    used.add(e)
    return live, needed, frozenset(used)


class DeadCell(nn.Module):
    """Placeholder for a cell whose output no later cell reads (it is not built, so has no parameters)."""

    multiplier = 0


class Cell(nn.Module):
    """One cell: preprocess the two inputs, compute the intermediate nodes, concatenate the outputs.

    Args:
        edges: ``(operation, input state)`` pairs, two per intermediate node.
        concat: states concatenated into the output.
        c_prev_prev, c_prev: channels of the two inputs.
        c_in: channels the operations on states 0 and 1 receive; c_out: channels of every node.
        reduction: this cell halves the resolution (operations on states 0/1 stride by 2).
        reduction_prev: the previous cell halved it (state 0 must be reduced to match).
        norm, preproc, vit: as for :class:`Network`.
    """

    def __init__(
        self,
        edges: tuple[tuple[str, int], ...],
        concat: tuple[int, ...],
        c_prev_prev: int,
        c_prev: int,
        c_in: int,
        c_out: int,
        reduction: bool,
        reduction_prev: bool,
        norm: str | None,
        preproc: bool,
        vit: bool,
    ):
        super().__init__()
        live, needed, used = cell_liveness(edges, concat)
        self.edges = edges
        self.concat = tuple(concat)
        self.used = used
        self.multiplier = len(concat)
        self.is_dead = not any(live[i] for i in concat)

        reduce0 = reduction_prev and not vit
        if not needed[0]:
            self.preprocess0 = None
        elif preproc:
            self.preprocess0 = (
                FactorizedReduce(c_prev_prev, c_out, norm) if reduce0 else ReLUConvBN(c_prev_prev, c_out, 1, 1, norm)
            )
        else:
            self.preprocess0 = Subsample(2) if reduce0 else nn.Identity()
        if not needed[1]:
            self.preprocess1 = None
        else:
            self.preprocess1 = ReLUConvBN(c_prev, c_out, 1, 1, norm) if preproc else nn.Identity()

        self.ops = nn.ModuleDict()
        for e in sorted(self.used):
            op, src = edges[e]
            stride = 2 if reduction and src < 2 and not vit else 1
            kind, kernel = parse_operation(op)
            self.ops[str(e)] = make_operation(kind, kernel, c_in if src < 2 else c_out, c_out, stride, norm)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states: list[torch.Tensor | None] = [
            self.preprocess0(s0) if self.preprocess0 is not None else None,
            self.preprocess1(s1) if self.preprocess1 is not None else None,
        ]
        for k in range(len(self.edges) // 2):
            out = None
            for e in (2 * k, 2 * k + 1):
                if e in self.used:
                    h = self.ops[str(e)](states[self.edges[e][1]])
                    out = h if out is None else out + h
            states.append(out)
        outputs = [states[i] for i in self.concat]
        if len(outputs) == 1:
            return outputs[0]
        like = next(s for s in outputs if s is not None)
        return torch.cat([s if s is not None else torch.zeros_like(like) for s in outputs], dim=1)


class Network(nn.Module):
    """An image classifier of the DeepNets-1M space.

    Args:
        genotype: normal and reduction cells.
        num_classes: outputs of the classifier.
        n_cells: number of cells (reductions at ``n_cells // 3`` and ``2 * n_cells // 3``).
        channels: channels of the first cell (``C``).
        image_size: input resolution the network is built for: 32 (CIFAR strides) or larger
            (ImageNet strides, 224 in the paper). It fixes the strides, the positional-encoding
            size and the VGG head's input size.
        stem: ``"cifar"`` (one k x k conv), ``"imagenet"`` (DARTS's two strided conv blocks) or
            ``"vit"`` (patch embedding + positional encoding; forced when the genotype has MSA).
        stem_pool: max-pool after the CIFAR-style stem.
        kernel: kernel size of the first convolution of the stem (3, 5 or 7).
        norm: ``"bn"`` (batch statistics), ``"bn-track"`` (running statistics) or None (no BN).
        preproc: 1x1 conv preprocessing of each cell's inputs (required if ``channel_mult > 1``
            or cells have several outputs).
        channel_mult: channel multiplier of the reduction cells (1 or 2).
        glob_avg: global average pooling head (else the final map is flattened, VGG-style).
        fc_layers: fully-connected layers in the head (1 or 2, ...).
        fc_dim: hidden size of the fully-connected head.

    ``forward`` returns logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int = 10,
        n_cells: int = 8,
        channels: int = 32,
        image_size: int = 32,
        stem: Stem = "cifar",
        stem_pool: bool = False,
        kernel: int = 3,
        norm: str | None = "bn",
        preproc: bool = True,
        channel_mult: int = 2,
        glob_avg: bool = True,
        fc_layers: int = 1,
        fc_dim: int = 256,
    ):
        super().__init__()
        vit = genotype.has_msa
        if vit:
            stem, glob_avg = "vit", True
        if stem not in ("cifar", "imagenet", "vit"):
            raise ValueError(f"stem={stem!r}: expected 'cifar', 'imagenet' or 'vit'")
        if stem == "vit" and not vit:
            raise ValueError("the ViT stem is used exactly when the genotype has self-attention ('msa')")
        steps_out = len(genotype.normal_concat)
        if (steps_out > 1 or channel_mult > 1) and not preproc:
            raise ValueError("preproc=False needs single-output cells and channel_mult=1")
        self.genotype = genotype
        self.stem_type = stem
        cell_kinds = [_reduces(i, n_cells) for i in range(n_cells)]
        reads = {}
        for reduction in (False, True):
            edges = genotype.reduce if reduction else genotype.normal
            concat = genotype.reduce_concat if reduction else genotype.normal_concat
            live, needed, _ = cell_liveness(edges, concat)
            if not any(live[i] for i in concat) and reduction in cell_kinds:
                raise ValueError("a cell has no path from its inputs to its output (only zero operations)")
            reads[reduction] = (needed[0], needed[1])
        # Walk back from the last cell: which outputs are read (index -1, -2: the stem's s1, s0).
        wanted = [False] * n_cells + [False, False]  # wanted[-1] = stem s1, wanted[-2] = stem s0
        wanted[n_cells - 1] = True
        for i in reversed(range(n_cells)):
            if wanted[i]:
                needs0, needs1 = reads[cell_kinds[i]]
                wanted[i - 1] = wanted[i - 1] or needs1
                wanted[i - 2] = wanted[i - 2] or needs0
        self.image_size = image_size
        large = image_size > 64
        c = channels
        size = image_size

        if stem == "vit":
            patch = 16 if large else 3
            self.stem = nn.Conv2d(3, c, patch, stride=patch, padding=int(patch < 4), bias=False)
            size = (size + 2 * int(patch < 4) - patch) // patch + 1
            self.pos_enc = PosEnc(c, size)
            c_pp = c_p = c
            reduction_prev = False
        elif stem == "cifar":
            c_stem = c * (3 if preproc and not large else 1)
            stride = 4 if large else 1
            layers: list[nn.Module] = [
                nn.Conv2d(3, c_stem, kernel, stride=stride, padding=kernel // 2, bias=False),
                norm_layer(norm, c_stem),
            ]
            size = (size + 2 * (kernel // 2) - kernel) // stride + 1
            if stem_pool:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                size = (size - 1) // 2 + 1
            self.stem = nn.Sequential(*layers)
            c_pp = c_p = c_stem
            reduction_prev = False
        else:
            s = 2 if large else 1
            self.stem0 = nn.Sequential(
                nn.Conv2d(3, c // 2, kernel, stride=s, padding=kernel // 2, bias=False),
                norm_layer(norm, c // 2),
                nn.ReLU(),
                nn.Conv2d(c // 2, c, 3, stride=s, padding=1, bias=False),
                norm_layer(norm, c),
            )
            if wanted[-1]:  # stem1 feeds the first cell's second input, if that cell reads it
                self.stem1 = nn.Sequential(
                    nn.ReLU(), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False), norm_layer(norm, c)
                )
            else:
                self.stem1 = None
            for _ in range(2 if large else 0):
                size = (size - 1) // 2 + 1
            size = (size - 1) // 2 + 1
            c_pp = c_p = c
            reduction_prev = True

        self.cells = nn.ModuleList()
        c_curr = c
        for i in range(n_cells):
            reduction = _reduces(i, n_cells)
            if reduction:
                c_curr *= channel_mult
            grow = channel_mult if _reduces(i + 1, n_cells) and steps_out == 1 and not preproc else 1
            if not wanted[i]:
                self.cells.append(DeadCell())
                if reduction and not vit:
                    size = (size - 1) // 2 + 1
                reduction_prev = reduction
                multiplier = len(genotype.reduce_concat if reduction else genotype.normal_concat)
                c_pp, c_p = c_p, multiplier * c_curr * grow
                continue
            cell = Cell(
                genotype.reduce if reduction else genotype.normal,
                genotype.reduce_concat if reduction else genotype.normal_concat,
                c_pp,
                c_p,
                c_curr if preproc else c_p,
                c_curr * grow,
                reduction,
                reduction_prev,
                norm,
                preproc,
                vit,
            )
            self.cells.append(cell)
            if reduction and not vit:
                size = (size - 1) // 2 + 1
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_curr * grow

        self.glob_avg = glob_avg
        if glob_avg:
            self.global_pooling = nn.AdaptiveAvgPool2d(1)
            c_head = c_p
        else:
            c_head = c_p * size * size
        head: list[nn.Module] = [nn.Linear(c_head, fc_dim if fc_layers > 1 else num_classes)]
        for j in range(fc_layers - 1):
            head += [nn.ReLU(), nn.Dropout(0.5), nn.Linear(fc_dim, fc_dim if j < fc_layers - 2 else num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem_type == "vit":
            s0 = s1 = self.pos_enc(self.stem(x))
        elif self.stem_type == "cifar":
            s0 = s1 = self.stem(x)
        else:
            s0 = self.stem0(x)
            s1 = self.stem1(s0) if self.stem1 is not None else None
        for cell in self.cells:
            s0, s1 = s1, (None if isinstance(cell, DeadCell) else cell(s0, s1))
        out = self.global_pooling(s1) if self.glob_avg else s1
        return self.classifier(torch.flatten(out, 1))


def darts(
    num_classes: int = 10,
    cells: int = 14,
    channels: int = 48,
    stem: Stem = "cifar",
    image_size: int | None = None,
    norm: str | None = "bn-track",
) -> Network:
    """The DARTS network (Liu et al., 2019) in this space.

    DARTS cells, reductions at 1/3 and 2/3 of the depth doubling the channels, 1x1 preprocessing,
    global average pooling and one linear classifier; no auxiliary head, no drop-path.

    Args:
        num_classes: outputs of the classifier.
        cells: number of cells (DARTS uses 20 on CIFAR-10, 14 on ImageNet).
        channels: channels of the first cell (36 on CIFAR-10, 48 on ImageNet in DARTS).
        stem: ``"cifar"`` (3x3 conv to 3C channels) or ``"imagenet"`` (two strided blocks).
        image_size: input resolution the net is built for; default 32 for the CIFAR stem and 224
            for the ImageNet stem.
        norm: ``"bn-track"`` (default: running statistics, for ordinary training),
            ``"bn"`` (batch statistics, as DeepNets-1M nets during GHN training) or None.
    """
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem={stem!r}: DARTS uses the 'cifar' or 'imagenet' stem")
    if image_size is None:
        image_size = 32 if stem == "cifar" else 224
    return Network(
        DARTS,
        num_classes=num_classes,
        n_cells=cells,
        channels=channels,
        image_size=image_size,
        stem=stem,
        kernel=3,
        norm=norm,
        preproc=True,
        channel_mult=2,
        glob_avg=True,
        fc_layers=1,
    )
