"""``Graph.draw`` / ``Graph.stats`` and ``python -m ghninit graph``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch.nn as nn

from ghninit import build_graph
from ghninit.__main__ import main
from ghninit.graph.build import Graph, Node
from ghninit.graph.draw import PRIMITIVE_COLOURS
from ghninit.graph.primitives import PRIMITIVES

MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def _diamond() -> Graph:
    """input -> conv -> bn -> sum, plus input -> sum: depth 3, 4 edges."""
    nodes = [
        Node("input", "input"),
        Node("c.weight", "conv", (4, 3, 3, 3), "c", "c.weight"),
        Node("bn", "bn"),
        Node("s", "sum"),
    ]
    edges = np.array([[0, 1, 1], [1, 2, 1], [2, 3, 1], [0, 3, 1], [0, 2, 2]], dtype=np.int64)
    return Graph(nodes, edges)


def test_stats_of_a_graph_computed_by_hand():
    stats = _diamond().stats()
    # undirected distances: 0-1 1, 0-2 2, 0-3 1, 1-2 1, 1-3 2, 2-3 1 -> 8 / 6
    assert stats["avg_shortest_path"] == pytest.approx(8 / 6)
    assert (stats["nodes"], stats["edges"], stats["virtual_edges"], stats["depth"]) == (4, 4, 1, 3)
    assert stats["avg_degree"] == pytest.approx(2.0)
    assert stats["primitives"] == {"input": 1, "conv": 1, "bn": 1, "sum": 1}


def test_every_primitive_has_its_own_colour():
    assert set(PRIMITIVE_COLOURS) == set(PRIMITIVES)
    assert len(set(PRIMITIVE_COLOURS.values())) == len(PRIMITIVES)


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_draw_writes_the_format_of_the_extension(tmp_path, suffix):
    path = _diamond().draw(tmp_path / f"g{suffix}")
    assert path.read_bytes().startswith(MAGIC[suffix])


def test_draw_long_graph_in_columns_with_virtual_edges(tmp_path):
    model = nn.Sequential(
        *[m for _ in range(30) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())]
    )
    graph = build_graph(model, virtual_edge_cutoff=50)
    assert len(graph.depth_levels()) > 40 and len(graph.virtual_edges)
    assert graph.stats()["depth"] == len(graph) - 1  # a chain
    graph.draw(tmp_path / "chain.png", virtual=True, max_rows=20)
    assert (tmp_path / "chain.png").stat().st_size > 1000


def test_draw_refuses_unknown_extension_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="png"):
        _diamond().draw(tmp_path / "g.jpg2")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _diamond().draw(tmp_path / "nope" / "g.png")


def test_graph_command_draws_and_prints_stats(tmp_path, capsys):
    out = tmp_path / "r18.svg"
    assert main(["graph", "torchvision:resnet18", "-o", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    graph = build_graph(__import__("torchvision").models.resnet18(), virtual_edge_cutoff=1)
    assert stats == {"model": "torchvision:resnet18", **graph.stats()}
    assert out.read_bytes().startswith(b"<?xml")
    assert main(["graph", "torchvision:resnet18", "-o", str(out)]) == 2  # exists, no --force
    assert main(["graph", "resnet1", "-o", str(tmp_path / "x.png")]) == 2
    assert "resnet18" in capsys.readouterr().err


def test_stats_match_networkx_on_a_real_network():
    nx = pytest.importorskip("networkx")
    graph = build_graph(__import__("torchvision").models.resnet18(), virtual_edge_cutoff=1)
    undirected = nx.Graph(graph.to_networkx(virtual=False)).to_undirected()
    stats = graph.stats()
    assert stats["avg_shortest_path"] == pytest.approx(nx.average_shortest_path_length(undirected))
    assert stats["avg_degree"] == pytest.approx(2 * undirected.number_of_edges() / len(graph))


_WITHOUT_EXTRAS = """
import runpy, sys
sys.modules["networkx"] = None  # as on a plain install: importing them fails
sys.modules["matplotlib"] = None
for args in (["resnet18", "--json"], ["resnet18", "-o", sys.argv[1]]):
    sys.argv = ["ghninit", "graph", *args]
    try:
        runpy.run_module("ghninit", run_name="__main__")
    except SystemExit as done:
        print(f"exit {done.code}", file=sys.stderr, flush=True)
"""


def test_graph_command_without_networkx_or_matplotlib(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    picture = tmp_path / "g.png"
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, str(picture)], capture_output=True, text=True, env=env, timeout=300
    )
    assert "Traceback" not in out.stderr, out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("exit ")] == ["exit 0", "exit 2"]
    assert '"avg_shortest_path"' in out.stdout
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and 'pip install "ghninit[graph]"' in errors[0]
    assert not picture.exists()
