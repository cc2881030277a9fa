"""Parity with the reference GHN-2: every fixture's model gets the same predicted parameters."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import LOCAL_FIXTURES, REFERENCE_DIR, reference_file
from parity import build_model, compare, load_fixture

import ghninit

FIXTURES = sorted(REFERENCE_DIR.glob("*__*.json")) if REFERENCE_DIR.is_dir() else []
_GHNS: dict[str, ghninit.GHN2] = {}


def _ghn(fixture: dict) -> ghninit.GHN2:
    name = fixture["ghn"]
    if name not in _GHNS:
        _GHNS[name] = ghninit.load_ghn(reference_file(f"{name}.safetensors"))
    return _GHNS[name]


def _check(path):
    fixture = load_fixture(path)
    model = build_model(fixture)
    report = ghninit.initialize(model, ghn=_ghn(fixture), keep_classifier=False)
    predicted = {name: p for name, p in model.named_parameters() if name in set(report.predicted)}
    problems = compare(predicted, fixture)
    assert not problems, "\n".join(problems[:20])
    return fixture, model


def test_parity_standalone_fixture():
    """Runs without ../shared, from the copy in tests/fixtures."""
    _check(LOCAL_FIXTURES / "cifar10__resnet18.json")


def test_parity_check_detects_a_wrong_prediction():
    fixture = load_fixture(LOCAL_FIXTURES / "cifar10__resnet18.json")
    model = build_model(fixture)
    predicted = _ghn(fixture).predict(model, predict_classifier=True)
    predicted["layer1.0.conv1.weight"] = predicted["layer1.0.conv1.weight"] * 1.001
    assert any("layer1.0.conv1.weight" in p for p in compare(predicted, fixture))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_parity_with_reference(path):
    _check(path)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_graph_matches_reference(path):
    """Same nodes (by parameter name or primitive) and the same real and virtual edges."""
    fixture = load_fixture(path)
    graph = ghninit.build_graph(build_model(fixture))

    def label(node_name, primitive, param):
        return param if param else primitive

    ours = [label(n.name, n.primitive, n.param) for n in graph.nodes]
    params = {name for name in fixture["params"]}
    theirs = [n["name"] if n["name"] in params else n["primitive"] for n in fixture["nodes"]]
    assert Counter(ours) == Counter(theirs)
    assert Counter((ours[s], ours[d], w) for s, d, w in graph.edges.tolist()) == Counter(
        (theirs[s], theirs[d], w) for s, d, w in fixture["edges"]
    )
