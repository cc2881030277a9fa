"""GHN-3's graph network: pre-LayerNorm Transformer layers over all nodes with a learned edge bias.

The first layer adds three structural embeddings to the node states (in-degree and out-degree
over real edges, clipped at 100, and the shortest-path distance from the input node, clipped at
1000) and computes a per-head attention bias for every ordered node pair from the pair's forward
and backward distances; every later layer adds the same bias unchanged. Distances take few
values, so the bias MLP runs once per distinct (forward, backward) pair and is then gathered
into the ``(heads, N, N)`` matrix. Module and parameter names follow the published GHN-3
state dicts (``gnn.<i>.ln1``, ``attn.to_qkv``, ``attn.proj_e``, ``ff.net``...).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_DEGREE = 100
MAX_INPUT_DISTANCE = 1000
EDGE_VALUES = 257  # distances 0..254 shifted by 2 (0 = no edge -> 2, 1 = real edge -> 3)


class EdgeEmbedding(nn.Module):
    """A learned table of edge values, initialised with sinusoids (row 0 zero); key ``embed``."""

    def __init__(self, hid: int, max_len: int = EDGE_VALUES):
        super().__init__()
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, hid, 2, dtype=torch.float32) * (-math.log(10000.0) / hid))
        table = torch.zeros(max_len, hid)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)
        table[0] = 0
        self.embed = nn.Embedding(max_len, hid)
        self.embed.weight.data.copy_(table)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.embed(values)


class Attention(nn.Module):
    """Multi-head self-attention over all nodes; with ``edge_bias`` it also owns the pair-bias MLP."""

    def __init__(self, dim: int, heads: int, edge_bias: bool):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Identity())
        if edge_bias:
            self.edge_embed = EdgeEmbedding(dim)
            self.proj_e = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, heads))

    def pair_bias(self, adjacency: torch.Tensor) -> torch.Tensor:
        """``(heads, N, N)`` bias from the ``(N, N)`` distance matrix (0 none, 1 real, d virtual)."""
        forward, backward = adjacency + 2, adjacency.T + 2
        codes, inverse = torch.unique(forward * EDGE_VALUES + backward, return_inverse=True)
        pairs = torch.cat([self.edge_embed(codes // EDGE_VALUES), self.edge_embed(codes % EDGE_VALUES)], dim=-1)
        return self.proj_e(pairs)[inverse].permute(2, 0, 1)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        q, k, v = self.to_qkv(x).view(n, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.to_out(y.transpose(0, 1).reshape(n, dim))


class FeedForward(nn.Module):
    """Linear, GELU, Linear (key ``net.0`` / ``net.3``, as in the published checkpoints)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim), nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GraphormerLayer(nn.Module):
    """``x += attn(LN1(x)) ; x += FF(LN2(x))``; the first layer also owns the structural embeddings."""

    def __init__(self, dim: int, heads: int, first: bool, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, edge_bias=first)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dim * mlp_ratio)
        if first:
            self.centrality_embed_in = nn.Embedding(MAX_DEGREE + 1, dim)
            self.centrality_embed_out = nn.Embedding(MAX_DEGREE + 1, dim)
            self.input_dist_embed = nn.Embedding(MAX_INPUT_DISTANCE + 1, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.ff(self.ln2(x))


def structure_indices(adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the in-degree, out-degree and input-distance embeddings for each node.

    Args:
        adjacency: ``(N, N)`` long matrix, 1 for real edges, d >= 2 for virtual ones; node 0 is the input.
    """
    real = (adjacency == 1).long()
    return (
        real.sum(0).clamp(0, MAX_DEGREE),
        real.sum(1).clamp(0, MAX_DEGREE),
        adjacency[0].clamp(0, MAX_INPUT_DISTANCE),
    )


class Graphormer(nn.Sequential):
    """The stack of :class:`GraphormerLayer` (keys ``0``, ``1``...)."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__(*[GraphormerLayer(dim, heads, first=i == 0) for i in range(layers)])

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """``(N, dim)`` node states after all layers, from initial states and the ``(N, N)`` distance matrix."""
        first = self[0]
        degree_in, degree_out, input_dist = structure_indices(adjacency)
        x = x + first.centrality_embed_in(degree_in)
        x = x + first.centrality_embed_out(degree_out)
        x = x + first.input_dist_embed(input_dist)
        bias = first.attn.pair_bias(adjacency)
        for layer in self:
            x = layer(x, bias)
        return x
