"""Decoders from node states to parameter tensors: a convolutional one for weights, an MLP for 1-D.

The convolutional decoder maps a node state to a 128 x S x S map, keeps the top-left kernel-sized
window (computing only the rows of the first linear layer it needs), and turns it into a
(64, 64, kh, kw) tensor with two 1x1 convolutions. The classifier head reads position (0, 0) and
maps the 64 output rows to the GHN's classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvDecoder(nn.Module):
    """State-dict compatible with the published ``decoder.*`` keys."""

    def __init__(self, in_features: int, hid: tuple[int, int], out_shape: Sequence[int], num_classes: int):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.hid = hid
        self.fc = nn.Sequential(nn.Linear(in_features, hid[0] * out_shape[2] * out_shape[3]), nn.ReLU())
        self.conv = nn.Sequential(
            nn.Conv2d(hid[0], hid[1], 1), nn.ReLU(), nn.Conv2d(hid[1], out_shape[0] * out_shape[1], 1), nn.Identity()
        )
        self.class_layer_predictor = nn.Sequential(nn.ReLU(), nn.Conv2d(out_shape[0], num_classes, 1))
        rows = torch.arange(hid[0] * out_shape[2] * out_shape[3]).view(hid[0], out_shape[2], out_shape[3])
        self.register_buffer("_fc_rows", rows, persistent=False)

    def forward(self, x: torch.Tensor, kernel: tuple[int, int] = (1, 1), class_pred: bool = False) -> torch.Tensor:
        """Decode ``(N, hid)`` states.

        Returns ``(N, 64, 64, kh', kw')`` with ``kh' = min(kh, S)``, or ``(N, num_classes, 64)``
        when ``class_pred``.
        """
        n = x.shape[0]
        h, w = min(kernel[0], self.out_shape[2]), min(kernel[1], self.out_shape[3])
        if class_pred:
            h = w = 1
        rows = self._fc_rows[:, :h, :w].reshape(-1)
        fc = self.fc[0]
        y = F.relu(F.linear(x, fc.weight[rows], fc.bias[rows])).view(n, self.hid[0], h, w)
        y = self.conv(y).view(n, self.out_shape[0], self.out_shape[1], h, w)
        if class_pred:
            return self.class_layer_predictor(y[:, :, :, :, 0])[:, :, :, 0]
        return y
