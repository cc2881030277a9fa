"""From a predicted tensor to a target parameter: tiling/slicing to shape, then normalisation.

Channels are tiled (target channel i takes predicted channel i mod 64), spatial dimensions are
sliced, and the result is scaled as in GHN-2: fan-in scaling for weights, ``2 * sigmoid(x / 2)``
for norm-layer weights and ``tanh(x / 5)`` for biases. Pure tensor functions, differentiable, so
training uses them too.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

Kind = Literal["weight", "norm", "bias", "pos_enc"]


def tile(w: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Slice or tile ``w`` to ``shape``.

    A 1-D or 2-D target of a 4-D prediction reads spatial position (0, 0). Each remaining
    dimension is sliced when the target is smaller and repeated cyclically when it is larger.
    """
    shape = tuple(shape)
    if w.dim() > len(shape):
        w = w[(slice(None),) * len(shape) + (0,) * (w.dim() - len(shape))]
    w = w[tuple(slice(0, min(t, s)) for t, s in zip(shape, w.shape))]
    reps = [math.ceil(t / s) for t, s in zip(shape, w.shape)]
    if any(r > 1 for r in reps):
        w = w.repeat(reps)[tuple(slice(0, t) for t in shape)]
    return w


def normalize(w: torch.Tensor, kind: Kind) -> torch.Tensor:
    """GHN-2's output normalisation of an already tiled tensor."""
    if kind == "pos_enc":
        return w
    if kind == "norm":
        return 2 * torch.sigmoid(0.5 * w)
    if kind == "bias" or w.dim() == 1:
        return torch.tanh(0.2 * w)
    shape = w.shape
    # Depthwise (in = 1) or wide-not-tall kernels are not followed by ReLU: beta = 1.
    beta = 1.0 if w.dim() > 2 and (shape[1] == 1 or shape[2] < shape[3]) else 2.0
    return w * math.sqrt(beta / math.prod(shape[1:]))
