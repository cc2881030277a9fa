"""Fuzz and property suite for initialize(): random DeepNets-1M architectures of every split.

The checks live in benchmarks/fuzz_initialize.py, whose ``--n 2000`` run is the long version; this
runs a small, fixed sample of it (a few minutes at most on 2 cores): every split, CIFAR-10 and
ImageNet heads, the shipped cifar10-mini GHN and a random-weight ImageNet GHN-2 (skipped when
../shared is absent). Plus failure injection, dtypes, and meta-device DeepNets.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
import torch.nn as nn
from conftest import REFERENCE_DIR, REPO_DIR

import ghninit
from ghninit import deepnets

sys.path.insert(0, str(REPO_DIR / "benchmarks"))
import fuzz_initialize as fz  # noqa: E402

IMAGENET_RANDOM = REFERENCE_DIR / "ghn2_imagenet_random.safetensors"


@pytest.fixture(scope="module")
def ghns():
    found = {"cifar10-mini": ghninit.load_ghn("cifar10-mini")}
    if IMAGENET_RANDOM.exists():
        found["imagenet-random"] = ghninit.load_ghn(IMAGENET_RANDOM)
    return found


def _ghn(ghns, name):
    if name not in ghns:
        pytest.skip(f"{IMAGENET_RANDOM} not found (../shared absent)")
    return ghns[name]


@pytest.mark.parametrize("ghn_name", ["cifar10-mini", "imagenet-random"])
@pytest.mark.parametrize("head", list(fz.HEADS))
@pytest.mark.parametrize("split", fz.SPLITS)
def test_random_architectures_keep_every_property(ghns, split, head, ghn_name):
    ghn = _ghn(ghns, ghn_name)
    index = 1000 * fz.SPLITS.index(split) + 17 * len(head) + len(ghn_name)  # fixed, distinct per case
    injection = fz.INJECTIONS[(fz.SPLITS.index(split) + len(head)) % len(fz.INJECTIONS)]
    row = fz.run_case(split, index, head, ghn, injection)
    assert row["error"] is None, row
    assert row["fraction_predicted"] > 0.5


@pytest.mark.parametrize("kind", fz.INJECTIONS)
def test_injected_failures_leave_the_state_dict_byte_identical(ghns, kind):
    model = deepnets.generate("test", 5).build(num_classes=10, image_size=32)
    model.train()(torch.randn(4, 3, 32, 32))  # non-trivial BatchNorm statistics, which must survive too
    before = fz.state_bytes(model)
    fz.check_all_or_nothing(model, ghns["cifar10-mini"], kind)
    assert fz.state_bytes(model) == before

    def no_injection(ghn, kind, seed=0):
        return contextlib.nullcontext()

    with pytest.MonkeyPatch.context() as mp, pytest.raises(fz.PropertyViolation, match="did not raise"):
        mp.setattr(fz, "injected", no_injection)  # the check itself fails when initialize succeeds
        fz.check_all_or_nothing(model, ghns["cifar10-mini"], kind)


def test_the_property_check_catches_a_silent_partial_write(ghns, monkeypatch):
    import ghninit.initializer as initializer

    real_write = initializer.write
    monkeypatch.setattr(initializer, "write", lambda model, ready: real_write(model, dict(list(ready.items())[1:])))
    model = deepnets.generate("test", 6).build(num_classes=10, image_size=32)
    with pytest.raises(fz.PropertyViolation, match="reported as predicted but did not change"):
        fz.check_initialize(model, ghns["cifar10-mini"], 32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(ghns, dtype):
    ghn = ghns["cifar10-mini"]
    spec = deepnets.generate("test", 7)
    reference = spec.build(num_classes=10, image_size=32)
    ghninit.initialize(reference, ghn=ghn)
    model = spec.build(num_classes=10, image_size=32).to(dtype)
    report = fz.check_initialize(model, ghn, 32)
    params = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert p.dtype == dtype, name
        if name in report.predicted:
            assert torch.equal(p, params[name].to(dtype)), name


def test_meta_built_deepnet_matches_a_normal_build(ghns):
    ghn = ghns["cifar10-mini"]
    spec = deepnets.generate("deep", 3)
    normal = spec.build(num_classes=10, image_size=32)
    ghninit.initialize(normal, ghn=ghn)
    meta = spec.build(num_classes=10, image_size=32, device="meta")
    report = ghninit.initialize(meta, ghn=ghn, device="cpu")
    assert report.fraction_predicted == 1.0
    for (name, p), q in zip(meta.state_dict().items(), normal.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.isfinite(meta(torch.randn(2, 3, 32, 32))).all()


def test_meta_and_cpu_mix_in_a_deepnet_is_a_clear_error(ghns):
    model = deepnets.generate("test", 8).build(num_classes=10, image_size=32)
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    model.get_submodule(last).to_empty(device="meta")
    before = {k: v.clone() for k, v in model.state_dict().items() if not v.is_meta}
    with pytest.raises(ValueError, match=f"tensors on the meta device \\('{last}.weight'\\) and on cpu"):
        ghninit.initialize(model, ghn=ghns["cifar10-mini"], device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
