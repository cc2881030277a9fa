"""GHN-3 reference fixtures: where they are, the L recipe, and comparisons of graphs and predictions.

The fixture format and tolerances are those of ``../shared/fixtures/ghn3_reference/README.md``:
relative 1e-4 on ``sum``/``abs_sum``/``sq_sum`` (scale max(|ref|, 1e-3 * abs_sum, 1e-6)), 1e-5 absolute
(+ 1e-4 relative) per sample, over the elements outside ``fingerprint_excludes``. Graphs must match
node by node, in order (label: parameter name, or primitive for op nodes, and every per-node field),
and edge by edge (indices and weights).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from conftest import LOCAL_FIXTURES, SHARED_DIR

from ghninit.ghn.ghn3 import GHN3, adjacency_matrix
from ghninit.ghn.graphormer import structure_indices
from ghninit.graph.build import Graph

GHN3_DIR = SHARED_DIR / "fixtures" / "ghn3_reference"
SUM_RTOL, SAMPLE_ATOL, SAMPLE_RTOL = 1e-4, 1e-5, 1e-4


def ghn3_file(name: str) -> Path | None:
    """A GHN-3 reference file from tests/fixtures or ../shared, or None."""
    for folder in (LOCAL_FIXTURES, GHN3_DIR):
        if (folder / name).exists():
            return folder / name
    return None


def fingerprint(values: torch.Tensor, excludes=()) -> dict:
    """``sum``/``abs_sum``/``sq_sum`` in float64 over the flat elements outside the half-open ``excludes``."""
    flat = values.detach().double().flatten()
    keep = torch.ones_like(flat, dtype=torch.bool)
    for start, end in excludes:
        keep[start:end] = False
    kept = flat[keep]
    return {"sum": kept.sum().item(), "abs_sum": kept.abs().sum().item(), "sq_sum": (kept**2).sum().item()}


def compare_values(name: str, value: torch.Tensor, ref: dict) -> list[str]:
    """Differences between one tensor and its fingerprint (empty when within tolerance)."""
    if list(value.shape) != list(ref["shape"]):
        return [f"{name}: shape {list(value.shape)} != {ref['shape']}"]
    excludes = ref.get("fingerprint_excludes", [])
    got = fingerprint(value, excludes)
    scale = max(1e-3 * ref["abs_sum"], 1e-6)
    problems = [
        f"{name}: {stat} {got[stat]:.8g} != {ref[stat]:.8g}"
        for stat in ("sum", "abs_sum", "sq_sum")
        if abs(got[stat] - ref[stat]) > SUM_RTOL * max(abs(ref[stat]), scale)
    ]
    flat = value.detach().double().flatten()
    for index, want in ref["samples"]:
        if any(a <= index < b for a, b in excludes):
            continue
        if abs(flat[index].item() - want) > SAMPLE_ATOL + SAMPLE_RTOL * abs(want):
            problems.append(f"{name}[{index}] = {flat[index].item():.8g} != {want:.8g}")
            break
    return problems


def compare_predictions(predicted: dict[str, torch.Tensor], fixture: dict) -> list[str]:
    """Differences between predicted parameters and the fixture (predicted set and every tensor)."""
    expected = {name for name, p in fixture["params"].items() if p["predicted"]}
    problems = []
    if set(predicted) != expected:
        problems.append(
            f"predicted set differs: missing {sorted(expected - set(predicted))[:5]}, "
            f"extra {sorted(set(predicted) - expected)[:5]}"
        )
    for name in sorted(expected & set(predicted)):
        problems += compare_values(name, predicted[name], fixture["params"][name])
    return problems


def node_label(name: str, primitive: str, params: set[str]) -> str:
    return name if name in params else primitive


def node_records(graph: Graph, ghn: GHN3) -> list[tuple]:
    """Per node: (label, primitive, shape, in_degree, out_degree, input_dist, shape_index, decoder_key)."""
    adjacency = adjacency_matrix(graph)
    degree_in, degree_out, dist = structure_indices(adjacency)
    shape_index = ghn.shape_enc.bucket_indices([n.shape for n in graph.nodes]).tolist()
    keys = {i: key for key, indices in ghn.decoder_groups(graph).items() for i in indices}
    return [
        (
            n.param if n.param else n.primitive,
            n.primitive,
            list(n.shape) if n.shape is not None else None,
            int(degree_in[i]),
            int(degree_out[i]),
            int(dist[i]),
            shape_index[i],
            list(keys[i]) if i in keys else None,
        )
        for i, n in enumerate(graph.nodes)
    ]


def fixture_records(fixture: dict) -> list[tuple]:
    params = set(fixture["params"])
    return [
        (
            node_label(n["name"], n["primitive"], params),
            n["primitive"],
            n["shape"],
            n["in_degree"],
            n["out_degree"],
            n["input_dist"],
            n["shape_index"],
            n["decoder_key"],
        )
        for n in fixture["nodes"]
    ]


def compare_graph(graph: Graph, ghn: GHN3, fixture: dict) -> list[str]:
    """Differences in nodes (in order, with all per-node fields) and in real and virtual edges (by index)."""
    ours, theirs = node_records(graph, ghn), fixture_records(fixture)
    problems = []
    if len(ours) != len(theirs):
        problems.append(f"{len(ours)} nodes, the reference has {len(theirs)}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            problems.append(f"node {i} differs: ours {a}, reference {b}")
            break
    ea = Counter(tuple(e) for e in graph.edges.tolist())
    eb = Counter(tuple(e) for e in fixture["edges"])
    if ea != eb:
        problems.append(
            f"edges differ: only ours {list((ea - eb).elements())[:4]}, only reference {list((eb - ea).elements())[:4]}"
        )
    return problems


def load_fixture(path: Path) -> dict:
    return json.loads(Path(path).read_text())
