"""Shape embeddings: each node's tensor shape as four learned 8-dim bucket embeddings.

Shapes are first made 4-D, then every dimension is mapped to the nearest of a fixed set of
channel or spatial values (ties go to the smaller value); nodes without a shape use a last
"dummy" row. Lookup tables are precomputed once, so encoding a graph is one vectorised gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn


def channel_values(num_classes: int) -> np.ndarray:
    """The 391 channel buckets: {1, 3, num_classes} + 8..56 + 64..4080 + 4096..8192."""
    values = [1, 3, num_classes, *range(8, 64, 8), *range(64, 4096, 16), *range(4096, 8193, 32)]
    return np.unique(values)


def spatial_values(max_spatial: int) -> np.ndarray:
    """Odd sizes from 1 below max(12, S), plus 14 and 16."""
    return np.unique([*range(1, max(12, max_spatial), 2), 14, 16])


def _nearest_lookup(values: np.ndarray, limit: int) -> np.ndarray:
    """Table t with t[c] = index of the value nearest to c, for 0 <= c <= limit (ties: smaller)."""
    c = np.arange(limit + 1)
    upper = np.clip(np.searchsorted(values, c), 0, len(values) - 1)
    lower = np.clip(upper - 1, 0, len(values) - 1)
    return np.where(np.abs(values[lower] - c) <= np.abs(values[upper] - c), lower, upper)


def shape_to_4d(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(C) -> (C,1,1,1); (a,b) -> (a,b,1,1); (1,N,C) -> (1,C,√N,√N); other (a,b,c) -> (a,b,c,1)."""
    shape = tuple(shape)
    if len(shape) == 1:
        return (shape[0], 1, 1, 1)
    if len(shape) == 2:
        return (shape[0], shape[1], 1, 1)
    if len(shape) == 3:
        if shape[0] == 1 and min(shape[1:]) > 1:  # a token sequence such as a ViT position embedding
            side = math.isqrt(shape[1])
            return (1, shape[2], side, side)
        return (shape[0], shape[1], shape[2], 1)
    return tuple(shape[:4])


class ShapeEncoder(nn.Module):
    """Embeds node shapes; state-dict compatible with the published GHN-2 (``embed_channel``, ``embed_spatial``)."""

    def __init__(self, hid: int, num_classes: int, max_shape: Sequence[int]):
        super().__init__()
        self.num_classes = num_classes
        channels = channel_values(num_classes)
        spatial = spatial_values(max_shape[3])
        self.embed_channel = nn.Embedding(len(channels) + 1, hid // 4)
        self.embed_spatial = nn.Embedding(len(spatial) + 1, hid // 4)
        self.dummy = (len(channels), len(spatial))
        ch = _nearest_lookup(channels, int(channels[-1]))
        ch[4:8] = np.searchsorted(channels, 8)  # 4-7 channels count as 8
        sp = _nearest_lookup(spatial, int(spatial[-1]))
        sp[2] = np.searchsorted(spatial, 3)  # 2x2 counts as 3x3
        self._channel_lookup, self._spatial_lookup = ch, sp

    def bucket_indices(self, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        """``(N, 4)`` bucket indices; ``None`` shapes get the dummy row."""
        idx = np.empty((len(shapes), 4), dtype=np.int64)
        idx[:, :2], idx[:, 2:] = self.dummy[0], self.dummy[1]
        rows = [i for i, s in enumerate(shapes) if s is not None]
        if rows:
            dims = np.array([shape_to_4d(shapes[i]) for i in rows], dtype=np.int64)
            ch, sp = self._channel_lookup, self._spatial_lookup
            # Values out of range (above the largest bucket, or 0) take the largest bucket.
            dims_ch = np.where((dims[:, :2] >= 1) & (dims[:, :2] < len(ch)), dims[:, :2], len(ch) - 1)
            dims_sp = np.where((dims[:, 2:] >= 1) & (dims[:, 2:] < len(sp)), dims[:, 2:], len(sp) - 1)
            idx[rows, :2] = ch[dims_ch]
            idx[rows, 2:] = sp[dims_sp]
        return torch.from_numpy(idx)

    def forward(self, shapes: Sequence[Sequence[int] | None]) -> torch.Tensor:
        """``(N, hid)`` shape embeddings for a list of shapes."""
        idx = self.bucket_indices(shapes).to(self.embed_channel.weight.device)
        return torch.cat(
            [
                self.embed_channel(idx[:, 0]),
                self.embed_channel(idx[:, 1]),
                self.embed_spatial(idx[:, 2]),
                self.embed_spatial(idx[:, 3]),
            ],
            dim=1,
        )
