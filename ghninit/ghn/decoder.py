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


def needed_rows(x: torch.Tensor, layer: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``relu(layer(x))[:, rows]`` computing only those output rows of the first layer."""
    return F.relu(F.linear(x, layer.weight[rows], layer.bias[rows]))


def channel_block(y: torch.Tensor, layer: nn.Module, full: tuple[int, int], needed: tuple[int, int], op) -> torch.Tensor:
    """The last layer (``full[0] * full[1]`` outputs, a 1x1 conv or a Linear applied by ``op``) computing
    only the first ``needed`` out x in channels of its ``(out, in)`` block, flattened."""
    if tuple(needed) == tuple(full):
        return layer(y)
    n_out, n_in = needed
    keep = (torch.arange(n_out, device=y.device)[:, None] * full[1] + torch.arange(n_in, device=y.device)).view(-1)
    return op(y, layer.weight[keep], layer.bias[keep])


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

    def forward(
        self,
        x: torch.Tensor,
        kernel: tuple[int, int] = (1, 1),
        class_pred: bool = False,
        channels: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Decode ``(N, hid)`` states.

        Args:
            kernel: the target kernel size; the map is cropped to ``min(kernel, S)``.
            class_pred: decode classifier weights instead.
            channels: ``(out, in)`` channels needed (at most 64 each); only those rows of the
                last convolution are computed (e.g. one input channel for a depthwise conv).

        Returns:
            ``(N, out, in, kh', kw')`` (64 x 64 by default), or ``(N, num_classes, 64)`` when
            ``class_pred``.
        """
        n = x.shape[0]
        h, w = min(kernel[0], self.out_shape[2]), min(kernel[1], self.out_shape[3])
        if class_pred:
            h = w = 1
        rows = self._fc_rows[:, :h, :w].reshape(-1)
        fc = self.fc[0]
        y = needed_rows(x, fc, rows).view(n, self.hid[0], h, w)
        y = self.conv[1](self.conv[0](y))
        full = self.out_shape[:2]
        n_out, n_in = full if class_pred or channels is None else channels
        y = channel_block(y, self.conv[2], full, (n_out, n_in), F.conv2d).view(n, n_out, n_in, h, w)
        if class_pred:
            return self.class_layer_predictor(y[:, :, :, :, 0])[:, :, :, 0]
        return y
