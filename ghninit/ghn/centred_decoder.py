"""GHN-3's weight decoder: node state -> (c, c, kh, kw) block read from the centre of an S x S map.

A Linear layer maps a node state to a 4h x S x S map (ReLU). A kh x kw kernel reads the rows
``[S//2 - kh//2, S//2 + ceil(kh/2))`` (same for columns) of that map; only the first Linear's
rows of that window are computed. Two Linear layers applied at each position (4h -> 8h, ReLU,
8h -> c*c) give the channel block, of which only the needed first out/in channels are
computed. Kernels larger than S are resized bilinearly. The classifier head reads the centre
position and maps the c output rows to the GHN's classes. Parameter names follow the published
checkpoints (``fc.0``, ``conv.0``, ``conv.2``, ``class_layer_predictor.1``, all 2-D Linear weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoder import channel_block, needed_rows


def centred_window(size: int, kernel: int) -> slice:
    """Rows of an S-long axis a kernel of ``kernel`` reads: centred on S//2, clipped to the map."""
    centre = size // 2
    return slice(max(0, centre - kernel // 2), min(size, centre + math.ceil(kernel / 2)))


class CentredDecoder(nn.Module):
    """Decoder of GHN-3; ``out_shape`` is the GHN's ``max_shape`` ``(c, c, S, S)``."""

    def __init__(self, in_features: int, hid: tuple[int, int], out_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.hid = hid
        channels, size = self.out_shape[0] * self.out_shape[1], self.out_shape[2:]
        self.fc = nn.Sequential(nn.Linear(in_features, hid[0] * size[0] * size[1]), nn.ReLU())
        self.conv = nn.Sequential(nn.Linear(hid[0], hid[1]), nn.ReLU(), nn.Linear(hid[1], channels), nn.Identity())
        self.class_layer_predictor = nn.Sequential(nn.ReLU(), nn.Linear(self.out_shape[0], num_classes))

    def forward(
        self,
        x: torch.Tensor,
        kernel: tuple[int, int] = (1, 1),
        channels: tuple[int, int] | None = None,
        class_pred: bool = False,
    ) -> torch.Tensor:
        """Decode ``(N, hid)`` states.

        Args:
            kernel: the target kernel ``(kh, kw)``.
            channels: ``(out, in)`` first channels to compute (at most c each; default all).
            class_pred: decode classifier weights (``kernel`` is then 1x1 and all c out-rows are used).

        Returns:
            ``(N, out, in, kh, kw)``, or ``(N, num_classes, in)`` when ``class_pred``.
        """
        n = x.shape[0]
        size = self.out_shape[2:]
        rows, cols = centred_window(size[0], kernel[0]), centred_window(size[1], kernel[1])
        h, w = rows.stop - rows.start, cols.stop - cols.start
        fc = self.fc[0]
        # rows of fc's output (hid0, S, S) inside the window
        r = torch.arange(rows.start, rows.stop, device=x.device)[:, None] * size[1] + torch.arange(
            cols.start, cols.stop, device=x.device
        )
        index = (torch.arange(self.hid[0], device=x.device)[:, None] * (size[0] * size[1]) + r.view(-1)).view(-1)
        y = needed_rows(x, fc, index).view(n, self.hid[0], h, w).permute(0, 2, 3, 1)
        y = self.conv[1](self.conv[0](y))
        full = self.out_shape[:2]
        n_out, n_in = full if channels is None else channels
        if class_pred:
            n_out = full[0]
        y = channel_block(y, self.conv[2], full, (n_out, n_in), F.linear)
        y = y.permute(0, 3, 1, 2).reshape(n, n_out, n_in, h, w)
        if (kernel[0] > h or kernel[1] > w) and not class_pred:
            y = F.interpolate(y.flatten(0, 1), size=tuple(kernel), mode="bilinear").view(n, n_out, n_in, *kernel)
        if class_pred:
            y = y[:, :, :, h // 2, w // 2].transpose(1, 2)  # (N, in, c)
            return self.class_layer_predictor(y).transpose(1, 2)
        return y
