"""Looking at a GHN graph: :func:`graph_stats` (the quantities of the GHN-2 paper's Table 1) and :func:`draw_graph`.

:func:`draw_graph` lays the nodes out by depth level (longest path from the input), input at the
top, the output at the bottom, and orders each level by the mean position of its neighbours (a few
barycentre sweeps) so that few edges cross. Long graphs (a ResNet-50 has over a hundred levels) are
cut into side-by-side columns of at most ``max_rows`` levels, read left to right; an edge that
leaves a column is drawn as a faint line to the next. Edges that skip levels are drawn as arcs so
that they do not hide behind the nodes they pass. Nodes are coloured by primitive (fixed colours,
the same in every picture) with a legend that counts them. Virtual edges are left out unless asked
for. Only matplotlib is needed; the file format follows the extension (PNG, SVG, PDF).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Protocol

import numpy as np

from .primitives import PRIMITIVES


class Graph(Protocol):
    """What drawing needs of a :class:`ghninit.graph.build.Graph` (not imported here: build.py imports this module)."""

    nodes: list
    real_edges: np.ndarray
    virtual_edges: np.ndarray

    def __len__(self) -> int: ...

    def depth_levels(self, reverse: bool = False) -> list[np.ndarray]: ...


#: One colour per primitive, in :data:`PRIMITIVES` order (tab20 entries, chosen so neighbours in a
#: typical network differ: convs blue, norms green, pools orange, ops grey/purple).
PRIMITIVE_COLOURS: dict[str, str] = dict(
    zip(
        PRIMITIVES,
        (
            "#ff7f0e",  # max_pool
            "#ffbb78",  # avg_pool
            "#17becf",  # sep_conv
            "#9edae5",  # dil_conv
            "#1f77b4",  # conv
            "#d62728",  # msa
            "#ff9896",  # cse
            "#7f7f7f",  # sum
            "#9467bd",  # concat
            "#000000",  # input
            "#c7c7c7",  # bias
            "#2ca02c",  # bn
            "#98df8a",  # ln
            "#e377c2",  # pos_enc
            "#8c564b",  # glob_avg
        ),
        strict=True,
    )
)
FORMATS = (".png", ".svg", ".pdf")


def graph_stats(graph: Graph) -> dict:
    """Size and shape of ``graph`` (real edges only), as in Table 1 of Knyazev et al. (2021).

    Returns:
        ``nodes``, ``edges`` (real), ``virtual_edges``, ``depth`` (edges on the longest path from
        the input to the output), ``avg_degree`` (mean undirected degree, 2E/N) and
        ``avg_shortest_path`` (mean over all connected pairs of the undirected graph, as the
        reference's ``Graph.properties``), and ``primitives``: the count of each primitive, most
        frequent first.
    """
    n, real = len(graph), graph.real_edges
    pairs_of_nodes = {(min(s, d), max(s, d)) for s, d in real[:, :2].tolist() if s != d}
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for s, d in pairs_of_nodes:
        neighbours[s].append(d)
        neighbours[d].append(s)
    total = pairs = 0
    for source in range(n):  # breadth-first from every node: no networkx needed
        seen, frontier, distance = {source}, [source], 0
        while frontier:
            distance += 1
            nxt = []
            for v in frontier:
                for w in neighbours[v]:
                    if w not in seen:
                        seen.add(w)
                        nxt.append(w)
            total += distance * len(nxt)
            pairs += len(nxt)
            frontier = nxt
    return {
        "nodes": n,
        "edges": len(real),
        "virtual_edges": len(graph.virtual_edges),
        "depth": max(len(graph.depth_levels()) - 1, 0),
        "avg_degree": 2 * len(pairs_of_nodes) / max(n, 1),
        "avg_shortest_path": total / pairs if pairs else 0.0,
        "primitives": dict(Counter(node.primitive for node in graph.nodes).most_common()),
    }


def format_stats(stats: dict) -> str:
    """:func:`graph_stats` as a few lines of text."""
    prims = ", ".join(f"{p} {c}" for p, c in stats["primitives"].items())
    return (
        f"nodes {stats['nodes']}, edges {stats['edges']} (+{stats['virtual_edges']} virtual), depth {stats['depth']}, "
        f"average degree {stats['avg_degree']:.2f}, average shortest path {stats['avg_shortest_path']:.2f}\n"
        f"primitives: {prims}"
    )


def _level_order(graph: Graph, levels: list[np.ndarray], sweeps: int = 4) -> dict[int, float]:
    """Position of each node within its level, by barycentre sweeps down and up the levels."""
    preds: dict[int, list[int]] = {}
    succs: dict[int, list[int]] = {}
    for s, d, _ in graph.real_edges:
        preds.setdefault(int(d), []).append(int(s))
        succs.setdefault(int(s), []).append(int(d))
    pos = {int(v): float(i) for level in levels for i, v in enumerate(level)}
    order = [list(map(int, level)) for level in levels]

    def settle(level: list[int], neighbours: dict[int, list[int]]) -> list[int]:
        def key(v: int) -> float:
            near = neighbours.get(v)
            return sum(pos[u] for u in near) / len(near) if near else pos[v]

        ranked = sorted(level, key=key)
        for i, v in enumerate(ranked):
            pos[v] = i - (len(ranked) - 1) / 2
        return ranked

    for _ in range(sweeps):
        order = [settle(level, preds) for level in order]
        order = [settle(level, succs) for level in reversed(order)][::-1]
    return pos


def draw_graph(
    graph: Graph,
    path: str | os.PathLike,
    *,
    virtual: bool = False,
    labels: bool | None = None,
    max_rows: int = 40,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw ``graph`` into ``path`` (``.png``, ``.svg`` or ``.pdf``); returns the path.

    Args:
        virtual: also draw the virtual edges (faint).
        labels: write each node's primitive and parameter beside it; default: for graphs of at
            most 60 nodes.
        max_rows: levels per column; longer graphs continue in the next column to the right.
        title: a first line above the node/edge/depth summary (e.g. the model's name).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f'drawing a graph needs matplotlib: pip install "ghninit[graph]" ({err})') from err

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: cannot tell the format from '{path.suffix}'; use one of {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder '{path.parent}' does not exist")
    n = len(graph)
    levels = graph.depth_levels()
    level_of = {int(v): i for i, level in enumerate(levels) for v in level}
    within = _level_order(graph, levels)
    width = max((len(level) for level in levels), default=1)
    rows = max(1, min(max_rows, len(levels)))
    columns = math.ceil(len(levels) / rows) if levels else 1
    rows = math.ceil(len(levels) / columns) if levels else 1  # balance the columns
    spread = max(width, 2) + 1.5  # horizontal room per column

    def xy(v: int) -> tuple[float, float]:
        lv = level_of[v]
        return (lv // rows) * spread + within[v], -(lv % rows)

    labels = n <= 60 if labels is None else labels
    fig_w = min(2.5 + columns * (0.4 * spread + (2.2 if labels else 0)), 60)
    fig_h = min(1.5 + 0.28 * rows, 40)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    node_size = 60 if n <= 200 else 35

    def edge(s: int, d: int, colour: str, alpha: float, lw: float, style: str = "-") -> None:
        if level_of[s] // rows != level_of[d] // rows:  # continues in a later column: not drawn
            return
        (x0, y0), (x1, y1) = xy(s), xy(d)
        span = level_of[d] - level_of[s]
        # An edge that skips levels bends sideways by a bounded amount (arc3's rad is relative to its length).
        bulge = 0.0 if span <= 1 else min(0.4 + 0.2 * math.sqrt(span), 0.4 * spread)
        side = (1 if s % 2 else -1) if x1 == x0 else (1 if x1 > x0 else -1)  # straight down: alternate sides
        rad = bulge / math.hypot(x1 - x0, y1 - y0) * side
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0),
                (x1, y1),
                connectionstyle=f"arc3,rad={rad}",
                arrowstyle="-",
                color=colour,
                alpha=alpha,
                lw=lw,
                ls=style,
                zorder=1,
            )
        )

    if virtual:
        for s, d, _ in graph.virtual_edges:
            edge(int(s), int(d), "#9467bd", 0.08, 0.4, "--")
    for s, d, _ in graph.real_edges:
        edge(int(s), int(d), "#404040", 0.6, 0.7)

    coords = np.array([xy(v) for v in range(n)]) if n else np.zeros((0, 2))
    colours = [PRIMITIVE_COLOURS.get(node.primitive, "#ffffff") for node in graph.nodes]
    ax.scatter(coords[:, 0], coords[:, 1], s=node_size, c=colours, edgecolors="#202020", linewidths=0.4, zorder=3)
    if labels:
        for v, node in enumerate(graph.nodes):
            text = node.primitive if node.param is None else f"{node.primitive} {node.param}"
            if node.shape is not None and node.param is not None:
                text += f" {tuple(node.shape)}"
            ax.annotate(text, coords[v], xytext=(5, 0), textcoords="offset points", fontsize=6, va="center", zorder=4)

    counts = Counter(node.primitive for node in graph.nodes)
    handles = [
        Line2D([], [], marker="o", ls="", markersize=7, markerfacecolor=PRIMITIVE_COLOURS[p], markeredgecolor="#202020",
               label=f"{p} ({counts[p]})")
        for p in PRIMITIVES
        if counts.get(p)
    ]  # fmt: skip
    # below the drawing: node labels extend right of the last column and would run into a side legend
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(handles), 8),
        frameon=False,
        fontsize=8,
        title="primitive",
    )
    # as graph_stats counts them, without its all-pairs shortest paths
    summary = f"{n} nodes, {len(graph.real_edges)} edges, depth {max(len(levels) - 1, 0)}" + (
        f"; {columns} columns, read left to right (edges between columns not drawn)" if columns > 1 else ""
    )
    ax.set_title(summary if title is None else f"{title}\n{summary}", fontsize=10)
    ax.set_axis_off()
    ax.margins(0.02, 0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
