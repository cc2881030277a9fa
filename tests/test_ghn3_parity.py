"""Parity with the reference GHN-3 (random weights): graphs and every predicted parameter.

Fixtures: ``../shared/fixtures/ghn3_reference`` (see its README); the resnet18 fixture is also in
tests/fixtures, so its graph test runs without ../shared (its 27 MB weights are not copied). The
L configuration's weights are regenerated from its recipe (859 MB in memory): set
``GHNINIT_GHN3_L=1`` to run those tests.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import LOCAL_FIXTURES
from ghn3_parity import (
    GHN3_DIR,
    compare_graph,
    compare_predictions,
    compare_values,
    ghn3_file,
    load_fixture,
)
from parity import build_model

import ghninit
from ghninit.zoo.ghn3_weights import ghn3_from_state_dict, state_dict_from_recipe

FIXTURES = sorted(GHN3_DIR.glob("*__*.json")) if GHN3_DIR.is_dir() else []
T_FIXTURES = [p for p in FIXTURES if p.name.startswith("ghn3tm8_random__")]
L_FIXTURES = [p for p in FIXTURES if p.name.startswith("ghn3lm8_random__")]
_GHNS: dict[str, ghninit.GHN3] = {}
run_l = pytest.mark.skipif(os.environ.get("GHNINIT_GHN3_L") != "1", reason="set GHNINIT_GHN3_L=1 (859 MB GHN)")


def _ghn(name: str) -> ghninit.GHN3:
    if name not in _GHNS:
        if name == "ghn3lm8_random":
            recipe = json.loads((GHN3_DIR / f"{name}.recipe.json").read_text())
            _GHNS[name] = ghn3_from_state_dict(state_dict_from_recipe(recipe), recipe["config"]).eval()
        else:
            path = ghn3_file(f"{name}.safetensors")
            if path is None:
                pytest.skip(f"{name}.safetensors not found")
            _GHNS[name] = ghninit.load_ghn(path)
    return _GHNS[name]


def _config_only(fixture: dict) -> ghninit.GHN3:
    """A GHN3 of the fixture's configuration on the meta device (graph tests need no weights)."""
    if fixture["ghn"] == "ghn3lm8_random":
        config = json.loads((GHN3_DIR / "ghn3lm8_random.recipe.json").read_text())["config"]
    else:
        config = {"max_shape": (64, 64, 16, 16), "hid": 64, "layers": 3, "heads": 8}
    with torch.device("meta"):
        return ghninit.GHN3(**config)


def _check_graph(path):
    fixture = load_fixture(path)
    ghn = _config_only(fixture)
    graph = ghn.build_graph(build_model(fixture))
    problems = compare_graph(graph, ghn, fixture)
    assert not problems, "\n".join(problems)


def _check_prediction(path):
    fixture = load_fixture(path)
    model = build_model(fixture).eval()
    ghn = _ghn(fixture["ghn"])
    torch.manual_seed(1234)
    report = ghninit.initialize(model, ghn=ghn, keep_classifier=False)
    params = dict(model.named_parameters())
    problems = compare_predictions({name: params[name] for name in report.predicted}, fixture)
    assert not problems, "\n".join(problems[:20])
    states = ghn.node_states(ghn.build_graph(build_model(fixture)))
    ref = {**fixture["node_embeddings"], "shape": fixture["node_embeddings_shape"]}
    problems = compare_values("node_embeddings", states, ref)  # node by node: the order must match too
    assert not problems, "\n".join(problems)


def test_graph_standalone_fixture():
    """Runs without ../shared, from the copy in tests/fixtures."""
    _check_graph(LOCAL_FIXTURES / "ghn3tm8_random__resnet18.json")


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_graph_matches_reference(path):
    """Same nodes with the same primitive, shape, degrees, input distance, shape index and decoder key; same edges."""
    _check_graph(path)


@pytest.mark.parametrize("path", T_FIXTURES, ids=[p.stem for p in T_FIXTURES])
def test_parity_with_reference(path):
    _check_prediction(path)


@run_l
@pytest.mark.parametrize("path", L_FIXTURES, ids=[p.stem for p in L_FIXTURES])
def test_parity_with_reference_large(path):
    _check_prediction(path)


@run_l
def test_recipe_regenerates_the_large_weights():
    recipe = json.loads((GHN3_DIR / "ghn3lm8_random.recipe.json").read_text())
    state = _ghn("ghn3lm8_random").state_dict()
    problems = [
        p
        for key, ref in recipe["fingerprints"].items()
        for p in compare_values(key, state[key], {**ref, "shape": list(state[key].shape)})
    ]
    assert not problems, problems[:5]
    assert sum(v.numel() for v in state.values()) == recipe["n_parameters"]


def test_parity_check_detects_a_wrong_prediction():
    path = GHN3_DIR / "ghn3tm8_random__resnet18.json"
    if not path.exists():
        pytest.skip("../shared absent")
    fixture = load_fixture(path)
    predicted = _ghn("ghn3tm8_random").predict(build_model(fixture), predict_classifier=True)
    assert not compare_predictions(predicted, fixture)
    predicted["layer1.0.conv1.weight"] = predicted["layer1.0.conv1.weight"] * 1.001
    assert any("layer1.0.conv1.weight" in p for p in compare_predictions(predicted, fixture))


def test_ghn2_graph_is_refused():
    ghn = _config_only({"ghn": "ghn3tm8_random"})
    graph = ghninit.build_graph(
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    )
    with pytest.raises(ValueError, match="GHN-3 rules"):
        ghn.node_states(graph)
