"""From a predicted tensor to a target parameter: normalisation, then tiling/slicing to shape.

Channels are tiled (target channel i takes predicted channel i mod 64), spatial dimensions are
sliced, and values are scaled as in GHN-2: fan-in scaling for weights, ``2 * sigmoid(x / 2)``
for norm-layer weights and ``tanh(x / 5)`` for biases. Scaling is element-wise and depends only
on the target shape, so it is applied to the small predicted block before tiling, and
:func:`write_tiled` copies that block straight into a parameter without materialising the
tiled tensor. All functions but ``write_tiled`` are differentiable, so training uses them too.
:func:`inflate` turns a predicted 2-D kernel into a 3-D one (the I3D rule used for ``Conv3d``),
:func:`collapse` a predicted square 2-D kernel into a 1-D one (``Conv1d``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch

Kind = Literal["weight", "norm", "bias", "pos_enc"]


def crop(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The block of ``w`` that tiles into ``shape``: each dimension sliced to at most the target size.

    A 1-D or 2-D target of a 4-D prediction reads spatial position (0, 0).
    """
    shape = tuple(shape)
    if w.dim() > len(shape):
        w = w[(slice(None),) * len(shape) + (0,) * (w.dim() - len(shape))]
    return w[tuple(slice(0, min(t, s)) for t, s in zip(shape, w.shape))]


def tile(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Slice or tile ``w`` to ``shape``: larger target dimensions repeat ``w`` cyclically."""
    shape = tuple(shape)
    w = crop(w, shape)
    reps = [math.ceil(t / s) for t, s in zip(shape, w.shape)]
    if any(r > 1 for r in reps):
        w = w.repeat(reps)[tuple(slice(0, t) for t in shape)]
    return w


def normalize(w: torch.Tensor, kind: Kind, shape: Sequence[int] | None = None) -> torch.Tensor:
    """GHN-2's output normalisation of a tensor destined for a parameter of ``shape`` (default: ``w``'s)."""
    shape = tuple(w.shape if shape is None else shape)
    if kind == "pos_enc":
        return w
    if kind == "norm":
        return 2 * torch.sigmoid(0.5 * w)
    if kind == "bias" or len(shape) == 1:
        return torch.tanh(0.2 * w)
    return w * weight_scale(shape)


def weight_scale(shape: Sequence[int]) -> float:
    """Fan-in scale ``sqrt(beta / fan_in)`` of a weight of ``shape`` (at least 2-D)."""
    # Depthwise (in = 1) or wide-not-tall kernels are not followed by ReLU: beta = 1.
    beta = 1.0 if len(shape) > 2 and (shape[1] == 1 or shape[2] < shape[3]) else 2.0
    return math.sqrt(beta / math.prod(shape[1:]))


def inflate(block: torch.Tensor, time: int) -> torch.Tensor:
    """I3D inflation of a 2-D kernel ``(out, in, kh, kw)`` into a 3-D one ``(out, in, time, kh, kw)``.

    The kernel is repeated ``time`` times along the new time axis and divided by ``time``, so the
    3-D convolution of a video whose frames are all one image gives the 2-D convolution of that
    image (Carreira & Zisserman, 2017).
    """
    if block.dim() != 4:
        raise ValueError(f"inflate() expects a 2-D kernel (out, in, kh, kw), got shape {tuple(block.shape)}")
    if time < 1:
        raise ValueError(f"inflate() needs a time length >= 1, got {time}")
    return block.unsqueeze(2).expand(-1, -1, time, -1, -1) / time


def collapse(block: torch.Tensor, size: int) -> torch.Tensor:
    """A 1-D kernel ``(out, in, size)`` from the block of a predicted square kernel ``(out, in, size, size)``: its rows summed.

    The rows are those of the full ``(size, size)`` kernel the block tiles into (a block smaller than
    ``size`` repeats), so the result is the kernel of the 1-D convolution that the 2-D one computes
    on an image whose rows are all one signal: the converse of :func:`inflate`. Summing also keeps
    the scale: the prediction is normalised for a fan-in of ``in * size * size``, and ``size`` rows
    summed spread about as a kernel normalised for ``in * size`` does. The mean or the middle row
    would be ``size`` or ``sqrt(size)`` times smaller: on the shipped cifar10-mini GHN, 8 Conv1d
    layers (k 2 to 15) get std 0.16-0.31 of He's ``sqrt(2 / (in * k))`` summed, 0.01-0.10 averaged
    or from the middle row (the GHN's own Conv2d kernels there: 0.04-0.21 of theirs;
    ``benchmarks/conv1d_collapse.py``, docs/every-parameter.md).
    """
    if block.dim() != 4:
        raise ValueError(f"collapse() expects a 2-D kernel (out, in, kh, kw), got shape {tuple(block.shape)}")
    if size < 1:
        raise ValueError(f"collapse() needs a kernel size >= 1, got {size}")
    rows = block.shape[2]
    whole, rest = divmod(size, rows)
    return whole * block.sum(2) + block[:, :, :rest].sum(2)


def tiles_into(block_shape: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether a block of ``block_shape`` tiles into ``shape`` (same rank, no larger dimension)."""
    return len(block_shape) == len(shape) and all(0 < b <= t for b, t in zip(block_shape, shape))


@torch.no_grad()
def write_tiled(dst: torch.Tensor, block: torch.Tensor) -> None:
    """In place, ``dst.copy_(tile(block, dst.shape))`` without building the tiled tensor.

    Each dimension splits into whole repeats of the block and a remainder; every combination is
    one broadcasting copy.
    """
    parts = []
    for t, s in zip(dst.shape, block.shape):
        whole = (t // s) * s
        options = [(0, whole, s)] if whole else []
        if t > whole:
            options.append((whole, t, t - whole))
        parts.append(options)
    for combo in itertools.product(*parts):
        target = dst[tuple(slice(a, b) for a, b, _ in combo)]
        source = block[tuple(slice(0, n) for _, _, n in combo)]
        split, src_view = [], []
        for (a, b, n), size in zip(combo, source.shape):
            split += [(b - a) // n, n]
            src_view += [1, size]
        target.view(split).copy_(source.reshape(src_view))
