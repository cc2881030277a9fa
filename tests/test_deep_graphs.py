"""Deep graphs: a 10k-node model without n x n allocations where none is wanted, and GHN-3's
attention rerouting over a bypass of hundreds of nodes without recursion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn as nn
from conftest import LOCAL_FIXTURES

from ghninit.graph.build import GHN3_RULES, build_graph

REPO = Path(__file__).resolve().parents[1]

# Peak resident memory (ru_maxrss) of a fresh process around one step on a 10k-node model.
_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import torch.nn as nn
    import ghninit
    blocks, full = int(sys.argv[1]), sys.argv[2] == "1"
    model = nn.Sequential(*[m for _ in range(blocks) for m in (nn.Linear(8, 8), nn.ReLU())], nn.Linear(8, 10))
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    out = {"before": peak()}
    if full:
        out["predicted"] = ghninit.initialize(model, ghn=ghninit.load_ghn(sys.argv[3])).fraction_predicted
        out["after"] = peak()
    else:  # without virtual edges first: the high-water mark only rises
        out["nodes"] = len(ghninit.build_graph(model, virtual_edge_cutoff=1))
        out["plain"] = peak()
        out["virtual_edges"] = len(ghninit.build_graph(model, virtual_edge_cutoff=50).virtual_edges)
        out["after"] = peak()
    print(json.dumps(out))
    """
)


def _measure(blocks: int, full: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", _MEASURE, str(blocks), "1" if full else "0"]
    args.append(str(LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"))
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_10k_node_graph_allocates_no_n_by_n_matrix_without_virtual_edges():
    m = _measure(5000)
    assert m["nodes"] == 10_003 and m["virtual_edges"] > 400_000
    # an n x n int64 matrix would be 800 MB at 10k nodes
    assert m["plain"] - m["before"] < 200e6, m
    # one byte a pair (100 MB) plus the virtual edges; the float32 and int64 matrices were 1.2 GB
    assert m["after"] - m["before"] < 700e6, m
    assert m["after"] < 4e9


def test_10k_node_model_initialises_under_4_gb():
    result = _measure(5000, full=True)
    assert result["predicted"] == 1.0  # every parameter predicted
    assert result["after"] < 4e9, result


class _LongBypass(nn.Module):
    """An attention softmax whose consumer also takes an input that reaches it around ``depth`` blocks."""

    def __init__(self, depth: int):
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.chain = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(8, 8), nn.ReLU())])
        self.out = nn.Linear(24, 10)

    def forward(self, x):
        a = self.inp(x)
        s = torch.softmax(a, dim=-1)  # GHN-3: an msa node
        h = self.chain(a)
        return self.out(torch.cat([s, a, h], dim=-1))  # a reaches the concat directly, via msa and via the chain


def test_ghn3_attention_rerouting_over_a_600_block_bypass():
    graph = build_graph(_LongBypass(600), rules=GHN3_RULES, virtual_edge_cutoff=1)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    msa = next(i for i, n in enumerate(graph.nodes) if n.primitive == "msa")
    edges = set(map(tuple, graph.real_edges[:, :2].tolist()))
    # inp reaches the concat three ways: its edge goes; the chain's end reaches it one way only: rewired
    # into the msa; the concat, left with the msa alone, is dropped
    assert not any(n.primitive == "concat" for n in graph.nodes)
    assert (index["inp.bias"], msa) in edges and (index["chain.1198.bias"], msa) in edges
    assert (msa, index["out.weight"]) in edges
    assert {d for s, d in edges if s == index["inp.bias"]} == {index["chain.0.weight"], msa}
    assert len(graph) == 1 + 2 + 1200 + 1 + 2
