"""The passes that rewrite a built graph the way the reference GHN-3 sees a network.

Each pass takes and returns ``(nodes, real_edges)``: GHN-3's softmax rule (the node after an
``msa`` keeps ``msa`` as its input, other inputs rerouted), the input feeding weight nodes that
have none, the order by depth level, a positional embedding moved before its consumer, the global
pool moved before the classifier, and the head-pool test of gated networks. ``build_graph``
applies them by the flags of :class:`~ghninit.graph.structure.GraphRules`.
"""

from __future__ import annotations

import numpy as np

from .algorithms import _drop_nodes, _longest_path_levels, _topological_rank
from .structure import Node, _is_param

_HEAD_PREFIXES = ("classifier", "fc", "head")


def _feed_weight_sources(nodes: list[Node], real: np.ndarray) -> np.ndarray:
    """An edge from the input (node 0) to every weight node that has no input."""
    fed = set(real[:, 1].tolist())
    extra = [(0, i) for i, n in enumerate(nodes) if i and i not in fed and n.param and "weight" in n.param]
    return np.array(sorted(set(map(tuple, real.tolist())) | set(extra)), dtype=np.int64).reshape(-1, 2)


def _in_generation_order(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """Stable reorder by longest path from a source (nodes must be in topological order)."""
    levels = _longest_path_levels(len(nodes), real[:, 0], real[:, 1])
    order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[order] = np.arange(len(nodes))
    return [nodes[i] for i in order], rank[real]


def _pos_enc_before_consumer(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """Move each ``pos_enc`` source node with one successor to just before that successor."""
    fed = set(real[:, 1].tolist())
    moved: dict[int, list[int]] = {}
    for i in (i for i, node in enumerate(nodes) if node.primitive == "pos_enc" and i not in fed):
        successors = real[real[:, 0] == i, 1]
        if len(successors) == 1:
            moved.setdefault(int(successors[0]), []).append(i)
    if not moved:
        return nodes, real
    skip = {i for group in moved.values() for i in group}
    order = [j for i in range(len(nodes)) if i not in skip for j in (*moved.get(i, ()), i)]
    rank = np.empty(len(nodes), dtype=np.int64)
    rank[order] = np.arange(len(nodes))
    return [nodes[i] for i in order], rank[real]


def _reroute_attention_inputs(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """GHN-3's softmax rule: the node after an ``msa`` keeps ``msa`` as its input.

    Another input ``j`` of that node loses its edge when it also reaches the node another way
    (or when ``msa`` does not feed ``j``); a ``j`` with no other way is rewired into ``msa``.
    ``sum``/``concat`` nodes left with one input are then dropped.
    """
    msa = [i for i, n in enumerate(nodes) if n.primitive == "msa"]
    if not msa:
        return nodes, real
    edges = set(map(tuple, real.tolist()))
    pred0: dict[int, list[int]] = {}
    for s, d in edges:
        pred0.setdefault(d, []).append(s)
    rank = _topological_rank(len(nodes), real)
    order = np.argsort(rank).tolist()

    def n_paths(src: int, dst: int, cap: int = 2) -> int:
        """Paths from ``src`` to ``dst`` in the DAG before rewiring, counted up to ``cap``.

        Forward over the nodes between the two in topological order (no other node is on such a
        path), without recursion: a bypass of thousands of nodes costs no stack.
        """
        lo, hi = rank[src], rank[dst]
        if lo >= hi:
            return 0
        count = {src: 1}
        for v in order[lo + 1 : hi + 1]:
            total = sum(count.get(p, 0) for p in pred0.get(v, ()))
            if total:
                count[v] = min(cap, total)
        return count.get(dst, 0)

    for i in msa:
        for out in sorted(d for s, d in edges if s == i):
            for j in sorted(s for s, d in edges if d == out and s != i):
                paths = n_paths(j, out)
                if paths > 1 or (i, j) not in edges:
                    edges.discard((j, out))
                if paths == 1 and (i, j) not in edges:
                    edges.add((j, i))
    real = np.array(sorted(edges), dtype=np.int64).reshape(-1, 2)
    indegree = np.bincount(real[:, 1], minlength=len(nodes))
    drop = [n.primitive in ("sum", "concat") and indegree[k] < 2 for k, n in enumerate(nodes)]
    return _drop_nodes(nodes, real, drop)


def _is_head_pool(i: int, nodes: list[Node], real: np.ndarray) -> bool:
    """Whether node ``i`` is not a global pool, or is the one feeding the classifier head (by name, as GHN-3)."""
    if nodes[i].primitive != "glob_avg":
        return True
    successors = [nodes[d] for d in real[real[:, 0] == i, 1]]
    return any(n.param is not None and n.param.startswith(_HEAD_PREFIXES) for n in successors)


def _pool_before_classifier(nodes: list[Node], real: np.ndarray) -> tuple[list[Node], np.ndarray]:
    """``... -> W -> b -> glob_avg`` (SqueezeNet's head) becomes ``... -> glob_avg -> W -> b``.

    The three nodes trade places and keep the edges of the places (the pool takes the weight's
    inputs), as the reference GHN-3 does.
    """
    n = len(nodes)
    if n < 4 or nodes[-1].primitive != "glob_avg" or nodes[-2].primitive != "bias" or not _is_param(nodes[-3], 2):
        return nodes, real
    return nodes[:-3] + [nodes[-1], nodes[-3], nodes[-2]], real
