"""Graph algorithms on nodes in topological order with edges as ``(E, 2)`` arrays, none recursive.

Depth levels (longest path from a source), shortest-path lengths up to a cutoff (one vectorised
step per node, one byte a pair), the edge list with virtual edges, a stable topological order
(Kahn, smallest index first), and removing nodes while joining their neighbours.
"""

from __future__ import annotations

import numpy as np

from ..errors import TraceError

VIRTUAL_EDGE_CUTOFF = 50


def _longest_path_levels(n: int, src: np.ndarray, dst: np.ndarray, flip: bool = False) -> list[np.ndarray]:
    """Level of each node = longest path from a source; nodes are in topological order (src < dst)."""
    level = np.zeros(n, dtype=np.int64)
    order = np.argsort(dst, kind="stable")
    src, dst = src[order], dst[order]
    # Process edges grouped by destination in increasing order: sources are final by then.
    starts = np.searchsorted(dst, np.arange(n))
    ends = np.searchsorted(dst, np.arange(n), side="right")
    for v in range(n):
        if ends[v] > starts[v]:
            level[v] = level[src[starts[v] : ends[v]]].max() + 1
    groups = [np.flatnonzero(level == lv) for lv in range(level.max() + 1 if n else 0)]
    return [n - 1 - g[::-1] for g in groups] if flip else groups


def shortest_path_lengths(n: int, real_edges: np.ndarray, cutoff: int = VIRTUAL_EDGE_CUTOFF) -> np.ndarray:
    """``(n, n)`` matrix of directed shortest-path lengths in a DAG (0 on the diagonal, inf if none or over ``cutoff``).

    Nodes must be in topological order. Column ``v`` is the element-wise minimum over the
    columns of ``v``'s predecessors, plus one: one vectorised step per node.
    """
    capped, cap = _capped_distances(n, real_edges, cutoff)
    dist = capped.astype(np.float32)
    dist[capped >= cap] = np.inf
    return dist


def _capped_distances(n: int, real_edges: np.ndarray, cutoff: int) -> tuple[np.ndarray, int]:
    """Shortest-path lengths as in :func:`shortest_path_lengths`, and ``cap``: every length over
    ``cutoff`` (or no path) is ``cap``. Capping keeps the values small: one byte a pair for the
    usual cutoff (100 MB at 10k nodes)."""
    cap = max(min(cutoff, n), 0) + 1  # no path is longer than n - 1
    dtype = np.uint8 if cap < 255 else np.int64
    dist = np.full((n, n), cap, dtype=dtype)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in real_edges[:, :2].tolist():
        preds[d].append(s)
    for v in range(n):
        if preds[v]:
            column = dist[:v, preds[v]].min(axis=1)
            dist[:v, v] = np.minimum(column, cap - 1) + 1
        dist[v, v] = 0
    return dist, cap


def _with_virtual_edges(n: int, real_edges: np.ndarray, cutoff: int) -> np.ndarray:
    """``[src, dst, weight]`` rows, by source then destination: real edges (weight 1) and, with
    ``cutoff`` > 1, every pair at shortest-path distance 2..``cutoff`` (weight the distance)."""
    real = np.unique(real_edges, axis=0) if len(real_edges) else real_edges.reshape(0, 2).astype(np.int64)
    if cutoff <= 1 or not n:
        return np.concatenate([real, np.ones((len(real), 1), dtype=np.int64)], axis=1).astype(np.int64)
    dist, cap = _capped_distances(n, real, cutoff)
    dist[real[:, 0], real[:, 1]] = 1  # an edge against the node order, too
    np.fill_diagonal(dist, 0)
    src, dst = np.nonzero((dist > 0) & (dist < cap))
    return np.stack([src, dst, dist[src, dst].astype(np.int64)], axis=1).astype(np.int64)


def _topological_order(n: int, edges: np.ndarray) -> np.ndarray:
    """Stable topological order (Kahn, smallest index first); raises on cycles."""
    import heapq

    indegree = np.zeros(n, dtype=np.int64)
    succ: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        succ[s].append(d)
        indegree[d] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        v = heapq.heappop(ready)
        order.append(v)
        for d in succ[v]:
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, d)
    if len(order) != n:
        raise TraceError("the traced graph has a cycle (a layer whose weights are reused downstream of itself)")
    return np.array(order, dtype=np.int64)


def _topological_rank(n: int, real: np.ndarray) -> np.ndarray:
    """Each node's place in a topological order: its index where the edges already follow the index order."""
    if not len(real) or (real[:, 0] < real[:, 1]).all():
        return np.arange(n, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[_topological_order(n, real)] = np.arange(n)
    return rank


def _in_topological_order(nodes: list, real: np.ndarray) -> tuple[list, np.ndarray]:
    if len(real) and (real[:, 0] >= real[:, 1]).any():
        order = _topological_order(len(nodes), real)
        rank = np.empty(len(nodes), dtype=np.int64)
        rank[order] = np.arange(len(nodes))
        return [nodes[i] for i in order], rank[real]
    return nodes, real


def _drop_nodes(nodes: list, real: np.ndarray, drop: list[bool]) -> tuple[list, np.ndarray]:
    """Remove the marked nodes, joining each one's predecessors to its successors."""
    if not any(drop):
        return nodes, real
    succ: dict[int, set[int]] = {i: set() for i in range(len(nodes))}
    pred: dict[int, set[int]] = {i: set() for i in range(len(nodes))}
    for s, d in real.tolist():
        succ[s].add(d)
        pred[d].add(s)
    for v in (i for i, flag in enumerate(drop) if flag):
        for p in pred[v]:
            succ[p].discard(v)
            succ[p] |= succ[v] - {p}
        for d in succ[v]:
            pred[d].discard(v)
            pred[d] |= pred[v] - {d}
    keep = [i for i, flag in enumerate(drop) if not flag]
    new = {old: i for i, old in enumerate(keep)}
    edges = sorted((new[s], new[d]) for s in keep for d in succ[s])
    return [nodes[i] for i in keep], np.array(edges, dtype=np.int64).reshape(-1, 2)
