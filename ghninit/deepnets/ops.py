"""Operations of the DeepNets-1M space, written so that :func:`ghninit.build_graph` describes them
the way GHN-2 was trained to see them.

- Convolutions follow DARTS: ReLU -> conv -> norm; separable convolutions are two depthwise +
  pointwise pairs; dilated convolutions one dilated depthwise + pointwise pair.
- Squeeze-and-excitation gates with a *hard* sigmoid applied directly before the product, so the
  product becomes a ``cse`` node.
- Self-attention is a leaf module (:class:`SelfAttention`) registered here as
  ``qkv.weight -> msa -> proj.weight -> proj.bias``; LayerNorms and the feed-forward part of the
  transformer block are ordinary layers.
- The positional encoding is a ``(1, C, H, W)`` parameter added to activations, which the graph
  builder turns into a ``pos_enc`` node feeding a ``sum``.

BatchNorm layers use batch statistics by default (``track_running_stats=False``), as in the
reference training of GHN-2; pass ``norm="bn-track"`` for running statistics.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph.primitives import NodeSpec, register_module


def norm_layer(norm: str | None, channels: int) -> nn.Module:
    """``"bn"``: BatchNorm with batch statistics; ``"bn-track"``: with running statistics; None: identity."""
    if norm in (None, "", "none"):
        return nn.Identity()
    if norm in ("bn", "bn-track"):
        return nn.BatchNorm2d(channels, track_running_stats=norm == "bn-track")
    raise ValueError(f"norm={norm!r}: expected 'bn', 'bn-track' or None")


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv (k x k, or 1 x k then k x 1 when ``factorized``) -> norm."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, norm: str | None = "bn", factorized: bool = False
    ):
        pad = kernel // 2
        if factorized:
            convs = [
                nn.Conv2d(c_in, c_in, (1, kernel), stride=(1, stride), padding=(0, pad), bias=False),
                nn.Conv2d(c_in, c_out, (kernel, 1), stride=(stride, 1), padding=(pad, 0), bias=False),
            ]
        else:
            convs = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)]
        super().__init__(nn.ReLU(), *convs, norm_layer(norm, c_out))


class DilConv(nn.Sequential):
    """ReLU -> dilated depthwise conv -> pointwise conv -> norm (dilation 2)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str | None = "bn"):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                c_in, c_in, kernel, stride=stride, padding=kernel - kernel % 2, dilation=2, groups=c_in, bias=False
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            norm_layer(norm, c_out),
        )


class SepConv(nn.Sequential):
    """Two (ReLU -> depthwise conv -> pointwise conv -> norm) blocks; the first one strides."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str | None = "bn"):
        pad = kernel // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            norm_layer(norm, c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, kernel, padding=pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            norm_layer(norm, c_out),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset strided 1x1 convs whose outputs are concatenated."""

    def __init__(self, c_in: int, c_out: int, norm: str | None = "bn"):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.norm = norm_layer(norm, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.norm(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class Subsample(nn.Module):
    """Keep every ``stride``-th pixel (a parameter-free reduction)."""

    def __init__(self, stride: int = 2):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride]


class ChannelSE(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (reduction 2); ``stride`` subsamples after gating."""

    def __init__(self, channels: int, stride: int = 1, reduction: int = 2):
        super().__init__()
        self.stride = stride
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.mean((2, 3))  # no keepdim: not a global-pooling node
        excite = self.fc2(F.relu(self.fc1(squeeze)))
        # Gate, then reshape, then multiply: the pattern the reference's graph builder keeps as `cse`.
        gate = F.hardsigmoid(excite).view(excite.shape[0], excite.shape[1], 1, 1)
        out = x * gate
        return out[:, :, :: self.stride, :: self.stride] if self.stride > 1 else out


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)``: fused q/k/v projection, attention, output projection."""

    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            heads = 1
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@register_module(SelfAttention)
def _self_attention_rule(module: SelfAttention) -> list[NodeSpec]:
    return [
        NodeSpec("conv", "qkv.weight", tuple(module.qkv.weight.shape)),
        NodeSpec("msa"),
        NodeSpec("conv", "proj.weight", tuple(module.proj.weight.shape)),
        NodeSpec("bias", "proj.bias", tuple(module.proj.bias.shape)),
    ]


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on a feature map: LN -> MSA -> add, LN -> MLP (GELU) -> add.

    The map ``(B, C, H, W)`` is read as ``H * W`` tokens; ``stride`` subsamples the output map.
    """

    def __init__(self, dim: int, stride: int = 1, heads: int = 8):
        super().__init__()
        self.stride = stride
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        h = self.attn(self.ln1(tokens)) + tokens
        h = self.ff(self.ln2(h)) + h
        out = h.transpose(1, 2).reshape(x.shape)
        return out[:, :, :: self.stride, :: self.stride] if self.stride > 1 else out


class PosEnc(nn.Module):
    """A learned ``(1, C, H, W)`` positional encoding added to the stem's feature map."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight


def make_operation(kind: str, kernel: int, c_in: int, c_out: int, stride: int, norm: str | None) -> nn.Module:
    """Build one cell operation (``kind`` and ``kernel`` from :func:`~.genotypes.parse_operation`)."""
    if kind == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c_in, c_out, norm)
    if kind == "max_pool":
        return nn.MaxPool2d(kernel, stride=stride, padding=kernel // 2)
    if kind == "avg_pool":
        return nn.AvgPool2d(kernel, stride=stride, padding=kernel // 2, count_include_pad=False)
    if kind == "conv":
        return ReLUConvBN(c_in, c_out, kernel, stride, norm)
    if kind == "conv2":
        return ReLUConvBN(c_in, c_out, kernel, stride, norm, factorized=True)
    if kind == "sep_conv":
        return SepConv(c_in, c_out, kernel, stride, norm)
    if kind == "dil_conv":
        return DilConv(c_in, c_out, kernel, stride, norm)
    if kind == "cse":
        _check_same(kind, c_in, c_out)
        return ChannelSE(c_in, stride)
    if kind == "msa":
        _check_same(kind, c_in, c_out)
        return TransformerBlock(c_in, stride)
    raise ValueError(f"unknown operation {kind!r}")


def _check_same(kind: str, c_in: int, c_out: int) -> None:
    if c_in != c_out:
        raise ValueError(f"{kind} keeps the number of channels, got {c_in} -> {c_out}")
