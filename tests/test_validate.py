"""Untrusted GHN configs: validated and compared with the file's header before anything is allocated."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import LOCAL_FIXTURES
from safetensors import safe_open
from safetensors.torch import save_file

import ghninit
from ghninit.ghn.config import expected_shapes, validate_config

GHN_PATH = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"
CIFAR_CONFIG = {"max_shape": [64, 64, 11, 11], "num_classes": 10, "hid": 32}


def tiny_file(path, config):
    """A safetensors file with one 1-element tensor and ``config`` in its metadata."""
    save_file({"embed.weight": torch.zeros(1)}, str(path), metadata={"config": json.dumps(config)})
    return path


def load_fails_fast(source, match):
    start = time.perf_counter()
    with pytest.raises(ghninit.GHNLoadError, match=match):
        ghninit.load_ghn(source)
    seconds = time.perf_counter() - start
    # the issue measured 47 s and 9 GB (hid 2000) before this check existed; one second is generous
    assert seconds < 1.0, seconds


@pytest.mark.parametrize(
    "hid, match",
    [
        (2000, r"tensor 'embed.weight' has shape \(1,\) in the weights, but .* needs \(15, 2000\)"),
        (100000, r"GHN config 'hid': 100000 is outside \[4, 4096\]"),
    ],
)
def test_hostile_hid_fails_fast_naming_the_problem(tmp_path, hid, match):
    path = tiny_file(tmp_path / "ghn.safetensors", {**CIFAR_CONFIG, "hid": hid})
    load_fails_fast(path, match)


def test_hub_folder_config_json_is_checked_before_allocating(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**CIFAR_CONFIG, "hid": 2000}))
    save_file({"embed.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    load_fails_fast(tmp_path, r"'embed.weight' has shape \(1,\)")


def test_reference_pt_config_is_checked_before_allocating(tmp_path):
    path = tmp_path / "ghn.pt"
    torch.save(
        {"config": {**CIFAR_CONFIG, "hid": 2000, "debug_level": 0}, "state_dict": {"embed.weight": torch.zeros(1)}},
        path,
    )
    load_fails_fast(path, r"'embed.weight' has shape \(1,\)")


def test_names_the_first_differing_tensor_of_real_weights(tmp_path):
    with safe_open(str(GHN_PATH), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    state["decoder.fc.0.weight"] = state["decoder.fc.0.weight"][:-1]
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=metadata)
    load_fails_fast(tmp_path / "bad.safetensors", r"tensor 'decoder.fc.0.weight' has shape \(15487, 32\)")
    del state["decoder.fc.0.weight"]
    save_file(state, str(tmp_path / "missing.safetensors"), metadata=metadata)
    load_fails_fast(tmp_path / "missing.safetensors", "tensor 'decoder.fc.0.weight' .* is missing")
    state["decoder.fc.0.weight"] = torch.zeros(15488, 32)
    state["surprise"] = torch.zeros(1)
    save_file(state, str(tmp_path / "extra.safetensors"), metadata=metadata)
    load_fails_fast(tmp_path / "extra.safetensors", "does not have: surprise")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hid": "32"}, "'hid': expected an integer, got str"),
        ({"hid": True}, "'hid': expected an integer, got bool"),
        ({"num_classes": 10**9}, "'num_classes': 1000000000 is outside"),
        ({"max_shape": [64, 64, 11]}, "'max_shape': expected 4 integers"),
        ({"max_shape": [64, 64, 11, 10**6]}, "'max_shape': dimension 3: 1000000 is outside"),
        ({"hypernet": "transformer"}, "'hypernet': expected one of 'gatedgnn', 'mlp'"),
        ({"ve": "yes"}, "'ve': expected true or false"),
        ({"heads": 8}, r"unknown GHN config key\(s\) 'heads'; a GHN2 config has max_shape, num_classes"),
    ],
)
def test_config_keys_types_and_ranges(change, match):
    with pytest.raises(ghninit.GHNLoadError, match=match):
        validate_config({**CIFAR_CONFIG, **change}, "some.safetensors")


def test_config_must_be_an_object(tmp_path):
    with pytest.raises(ghninit.GHNLoadError, match="must be a JSON object"):
        validate_config([1, 2], "x")


def test_expected_shapes_match_a_real_ghn_without_allocating():
    shapes = expected_shapes({**CIFAR_CONFIG, "hid": 4096, "max_shape": [1024, 1024, 64, 64]})  # meta: instant
    assert shapes["embed.weight"] == (15, 4096)
    real = ghninit.load_ghn(GHN_PATH)
    assert expected_shapes(real.config) == {k: tuple(v.shape) for k, v in real.state_dict().items()}
