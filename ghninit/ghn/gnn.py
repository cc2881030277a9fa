"""Message passing of GHN-2: a gated graph network swept forward then backward, level by level.

The reference updates one node at a time. Here all nodes of one depth level (no edges between
them) are updated together, which gives the same result because a node only reads nodes that
come before it in the sweep. Per level, messages from all earlier nodes are one dense matrix
product with the (virtual-)edge weights; the MLP of each node's state is computed once, right
after that node is updated. No tensor is modified in place, so the sweep can be trained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Sequential):
    """Linear layers with ReLU after each (or none after the last); keys ``fc.0``, ``fc.2``... ."""

    def __init__(self, in_features: int, hid: tuple[int, ...], last_activation: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for j, n_out in enumerate(hid):
            layers.append(nn.Linear(in_features if j == 0 else hid[j - 1], n_out))
            layers.append(nn.ReLU() if last_activation or j < len(hid) - 1 else nn.Identity())
        self.fc = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class SweepPlan:
    """Per-sweep node order, level boundaries and permuted edge-weight matrices of one graph."""

    def __init__(self, n: int, edges: np.ndarray, levels: list[np.ndarray], reverse: bool, device):
        order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
        self.order = torch.as_tensor(order, device=device)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(n, device=device)
        self.bounds = np.cumsum([0] + [len(lv) for lv in levels]).tolist()
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        # Row = receiving node, column = sending node, both in sweep order.
        recv, send = (edges[:, 0], edges[:, 1]) if reverse else (edges[:, 1], edges[:, 0])
        real = torch.zeros(n, n)
        virtual = torch.zeros(n, n)
        real[rank[recv[edges[:, 2] == 1]], rank[send[edges[:, 2] == 1]]] = 1.0
        virtual[rank[recv], rank[send]] = torch.as_tensor(1.0 / edges[:, 2], dtype=torch.float32)
        self.real = real.to(device)
        # [real | virtual]: one product with the stacked (mlp, mlp_ve) messages of all nodes.
        self.both = torch.cat([real, virtual], 1).to(device)


class GatedGNN(nn.Module):
    """One forward and one backward sweep with a shared GRU cell (keys ``mlp``, ``mlp_ve``, ``gru``)."""

    def __init__(self, hid: int = 32, ve: bool = True):
        super().__init__()
        self.ve = ve
        self.mlp = MLP(hid, (hid // 2 if ve else hid, hid))
        if ve:
            self.mlp_ve = MLP(hid, (hid // 2, hid))
        self.gru = nn.GRUCell(hid, hid)

    def forward(self, x: torch.Tensor, plans: tuple[SweepPlan, SweepPlan]) -> torch.Tensor:
        for plan in plans:
            x = self._sweep(x, plan)
        return x

    def _sweep(self, x: torch.Tensor, plan: SweepPlan) -> torch.Tensor:
        x = x[plan.order]
        n, hid = x.shape
        message = self._message_fn()
        gru = (self.gru.weight_ih, self.gru.weight_hh, self.gru.bias_ih, self.gru.bias_hh)
        streams = 2 if self.ve else 1
        adjacency = plan.both if self.ve else plan.real
        # Messages sent by every node so far, (mlp, mlp_ve) stacked: rows of nodes not yet
        # updated stay zero and their adjacency columns are zero too. Updated out of place, so
        # the sweep stays differentiable.
        sent = x.new_zeros(streams, n, hid)
        states = []
        for start, end in zip(plan.bounds[:-1], plan.bounds[1:]):
            m = adjacency[start:end] @ sent.view(streams * n, hid)
            h = torch.gru_cell(m, x[start:end], *gru)
            states.append(h)
            out = message(h).view(end - start, streams, hid).transpose(0, 1)
            sent = torch.slice_scatter(sent, out, dim=1, start=start, end=end)
        return torch.cat(states)[plan.inverse]

    def _message_fn(self):
        """``h -> [mlp(h), mlp_ve(h)]`` as two fused linear layers (one wide, one block-diagonal)."""
        if not self.ve:
            return self.mlp
        a, b = self.mlp.fc, self.mlp_ve.fc
        w1 = torch.cat([a[0].weight, b[0].weight])
        b1 = torch.cat([a[0].bias, b[0].bias])
        w2 = torch.block_diag(a[2].weight, b[2].weight)
        b2 = torch.cat([a[2].bias, b[2].bias])
        return lambda h: F.relu(F.linear(F.relu(F.linear(h, w1, b1)), w2, b2))
