"""Rebuild a reference fixture's model and compare predictions with its fingerprints (spec §8)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torchvision

from ghninit.adapt import adapt_to_cifar

SUM_RTOL = 1e-4
SAMPLE_ATOL = 1e-5


def load_fixture(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def build_model(fixture: dict) -> torch.nn.Module:
    """The fixture's model, built as its ``construct`` field says, after ``torch.manual_seed(0)``."""
    construct = fixture["construct"]
    match = re.match(r"torchvision\.models\.(\w+)\((.*?)\)", construct)
    assert match, f"unexpected construct {construct!r}"
    kwargs = {}
    for key, value in re.findall(r"(\w+)\s*=\s*([\w.]+)", match.group(2)):
        kwargs[key] = int(value) if value.isdigit() else value
    torch.manual_seed(0)
    model = getattr(torchvision.models, match.group(1))(**kwargs)
    if fixture["dataset"] == "cifar10":
        adapt_to_cifar(model)
    return model


def compare(predicted: dict[str, torch.Tensor], fixture: dict) -> list[str]:
    """Differences between predicted tensors and the fixture's fingerprints (empty when they match)."""
    problems = []
    expected = {name for name, p in fixture["params"].items() if p["predicted"]}
    if set(predicted) != expected:
        problems.append(
            f"predicted set differs: missing {sorted(expected - set(predicted))[:5]}, "
            f"extra {sorted(set(predicted) - expected)[:5]}"
        )
    for name in sorted(expected & set(predicted)):
        ref = fixture["params"][name]
        value = predicted[name].detach().double()
        if list(value.shape) != ref["shape"]:
            problems.append(f"{name}: shape {list(value.shape)} != {ref['shape']}")
            continue
        for stat, got in (("sum", value.sum()), ("abs_sum", value.abs().sum()), ("sq_sum", (value**2).sum())):
            want = ref[stat]
            if abs(got.item() - want) > SUM_RTOL * max(abs(want), 1.0):
                problems.append(f"{name}: {stat} {got.item():.6g} != {want:.6g}")
        flat = value.flatten()
        for index, want in ref["samples"]:
            if abs(flat[index].item() - want) > SAMPLE_ATOL:
                problems.append(f"{name}[{index}] = {flat[index].item():.7g} != {want:.7g}")
                break
    return problems
