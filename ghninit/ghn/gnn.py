"""Message passing of GHN-2: a gated graph network swept forward then backward, level by level.

The reference updates one node at a time. Here all nodes of one depth level (no edges between
them) are updated together, which gives the same result because a node only reads nodes that
come before it in the sweep. Per level, the messages on the level's incoming (virtual-)edges are
gathered and summed with their weights, so time and memory grow with the edge count; the MLP of
each node's state is computed once, right after that node is updated.
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
    """Per-sweep node order, level boundaries and the incoming edges of each level of one graph.

    Edges are kept as lists (no n x n matrix), so memory and time grow with the edge count. For
    each level, :attr:`incoming` holds the sending row in the stacked message buffer
    (``stream * n + rank``), the receiving row within the level, and the edge weight. Without
    virtual edges there is one stream (real edges, weight 1); with them (``virtual``) stream 0 reads
    the real edges and stream 1 every edge weighted by ``1 / distance`` (real ones at distance 1).
    """

    def __init__(self, n: int, edges: np.ndarray, levels: list[np.ndarray], reverse: bool, device, virtual: bool):
        order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
        self.n = n
        self.order = torch.as_tensor(order, device=device)
        self.inverse = torch.empty_like(self.order)
        self.inverse[self.order] = torch.arange(n, device=device)
        self.bounds = np.cumsum([0] + [len(lv) for lv in levels]).tolist()
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        edges = np.asarray(edges).reshape(-1, 3)
        recv, send = (edges[:, 0], edges[:, 1]) if reverse else (edges[:, 1], edges[:, 0])
        real = edges[:, 2] == 1
        recv_, send_, weight = rank[recv[real]], rank[send[real]], np.ones(int(real.sum()))
        if virtual:
            recv_ = np.concatenate([recv_, rank[recv]])
            send_ = np.concatenate([send_, n + rank[send]])
            weight = np.concatenate([weight, 1.0 / edges[:, 2]])
        self.incoming = self._per_level(recv_, send_, weight, device)

    def _per_level(self, recv: np.ndarray, send: np.ndarray, weight: np.ndarray, device) -> list:
        """(receiving row in level, sending row, weight) tensors for each level; None if no edge.

        A repeated (receiver, sender) pair counts once, as one matrix entry did.
        """
        pairs, first = np.unique(np.stack([recv, send], 1), axis=0, return_index=True)
        recv, send, weight = pairs[:, 0], pairs[:, 1], weight[first]
        cuts = np.searchsorted(recv, self.bounds).tolist()  # np.unique sorted the pairs by receiver
        level = np.repeat(np.arange(len(self.bounds) - 1), np.diff(self.bounds))
        local = torch.as_tensor(recv - np.asarray(self.bounds)[level[recv]], device=device)
        send_t = torch.as_tensor(send, device=device)
        weight_t = torch.as_tensor(weight, dtype=torch.float32, device=device)[:, None]
        per_level = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):  # slices are views: no copy per level
            per_level.append((local[lo:hi], send_t[lo:hi], weight_t[lo:hi]) if hi > lo else None)
        return per_level


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
        # Messages sent by every node so far, the (mlp, mlp_ve) streams stacked as rows
        # stream * n + rank. A level only reads rows of earlier levels, and gathering saves no
        # values for backward, so each level's rows can be written in place (autograd-safe).
        sent = x.new_zeros(streams * n, hid)
        states = []
        for (start, end), edges in zip(zip(plan.bounds[:-1], plan.bounds[1:]), plan.incoming):
            m = x.new_zeros(end - start, hid)
            if edges is not None:
                recv, send, weight = edges
                m = m.index_add(0, recv, sent.index_select(0, send) * weight)
            h = torch.gru_cell(m, x[start:end], *gru)
            states.append(h)
            out = message(h).view(end - start, streams, hid).transpose(0, 1)
            sent.view(streams, n, hid)[:, start:end] = out
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
