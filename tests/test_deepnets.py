"""DeepNets-1M space and generator: determinism, split statistics, buildability and graph conventions."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from ghninit import build_graph, deepnets
from ghninit.deepnets.__main__ import main as deepnets_cli
from ghninit.deepnets.generator import RULES, imagenet_parameters_bound

SAMPLE = [(split, i) for split in ("train", "test", "deep", "dense", "bnfree") for i in range(2)]


def test_generator_is_a_pure_function_of_split_and_index():
    for split, i in [("train", 0), ("train", 12345), ("test", 7)]:
        assert deepnets.generate(split, i) == deepnets.generate(split, i)
    # Independent of call order and of other draws in between.
    later = deepnets.generate("test", 5)
    deepnets.generate("train", 99)
    assert deepnets.generate("test", 5) == later
    # Splits and indices differ.
    assert deepnets.generate("test", 0) != deepnets.generate("val", 0)
    assert deepnets.generate("train", 0) != deepnets.generate("train", 1)


def test_generator_is_stable_across_versions():
    """A fingerprint of the first TEST architectures: changing it changes every published number."""
    got = [(s.n_cells, s.genotype.steps, s.stem, s.kernel, s.params_cifar10) for s in deepnets.iterate("test", 0, 3)]
    assert got == [(8, 4, "vit", 5, 209418), (17, 2, "imagenet", 3, 531962), (13, 1, "cifar", 7, 1033002)]


def test_imagenet_parameter_bound():
    for spec in deepnets.iterate("train", 0, 12):
        net = spec.build(10, 32, device="meta")
        exact = deepnets.count_parameters(spec.build(1000, 224, device="meta"))
        assert exact <= imagenet_parameters_bound(spec, net)


def test_wide_is_test_with_four_times_the_channels():
    test, wide = deepnets.generate("test", 4), deepnets.generate("wide", 4)
    assert wide.genotype == test.genotype and wide.n_cells == test.n_cells
    assert wide.channels == 4 * test.channels == 128


def test_unknown_split_and_negative_index():
    with pytest.raises(ValueError, match="unknown split"):
        deepnets.generate("nope", 0)
    with pytest.raises(ValueError):
        deepnets.generate("test", -1)
    assert deepnets.generate("BN-FREE", 0) == deepnets.generate("bnfree", 0)


@pytest.mark.parametrize("split", ["train", "test", "deep", "dense", "bnfree"])
def test_split_statistics_follow_the_paper(split):
    specs = list(deepnets.iterate(split, 0, 25 if split in ("train", "test") else 12))
    rules = RULES[split]
    cells = [s.n_cells for s in specs]
    steps = [s.genotype.steps for s in specs]
    assert rules.min_cells <= min(cells) and max(cells) <= rules.max_cells
    assert rules.min_steps <= min(steps) and max(steps) <= rules.max_steps
    assert max(cells) - min(cells) >= (rules.max_cells - rules.min_cells) // 2  # the range is used
    assert all(s.params_cifar10 <= rules.max_params for s in specs)
    no_bn = sum(not s.has_bn for s in specs) / len(specs)
    channels = {s.channels for s in specs}
    if split == "train":
        assert channels <= set(range(16, 129, 16)) and len(channels) > 1
    else:
        assert channels == {32}
    if split == "bnfree":
        assert no_bn == 1.0
    else:
        assert no_bn <= 0.15  # only shallow, small networks may lack BatchNorm (a few % in the paper)
    ops = Counter(op for s in specs for op in s.genotype.ops)
    assert ops["msa"] > 0 and ops["cse"] > 0 and ops["sep_conv_3x3"] > 0


@pytest.mark.parametrize("split,index", SAMPLE)
def test_generated_networks_build_run_and_have_proper_graphs(split, index):
    spec = deepnets.generate(split, index)
    for size in (32, 224):
        net = spec.build(num_classes=10, image_size=size).eval()
        with torch.no_grad():
            out = net(torch.randn(2, 3, size, size))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    net = spec.build(num_classes=10, image_size=32)
    graph = build_graph(net)
    prims = [n.primitive for n in graph.nodes]
    assert prims[0] == "input" and prims.count("input") == 1
    n = len(graph)
    assert graph.classifier == (n - 2, n - 1)
    assert graph.nodes[-2].param.endswith("weight") and graph.nodes[-1].param.endswith("bias")
    assert graph.nodes[-2].param.startswith("classifier.")
    assert not graph.uncovered, "every parameter of a generated network lies on the input-output path"
    built = {type(m) for m in net.modules()}
    if deepnets.TransformerBlock in built:
        assert {"msa", "ln", "pos_enc"} <= set(prims)
    if deepnets.ChannelSE in built:
        assert "cse" in prims


def test_space_primitives_in_graphs():
    """Self-attention, hard-sigmoid SE and positional encodings come out as GHN-2 expects."""
    genotype = deepnets.Genotype(
        normal=(("cse", 1), ("conv_3x3", 0), ("msa", 2), ("sep_conv_3x3", 1)),
        normal_concat=(2, 3),
        reduce=(("max_pool_3x3", 0), ("dil_conv_5x5", 1)),
        reduce_concat=(2,),
    )
    with pytest.raises(ValueError, match="ViT stem"):  # the patch stem goes with self-attention only
        deepnets.Network(deepnets.DARTS, stem="vit")
    net = deepnets.Network(genotype, n_cells=4, channels=16)
    graph = build_graph(net)
    prims = Counter(n.primitive for n in graph.nodes)
    assert prims["pos_enc"] == 1 and prims["msa"] == 2 and prims["cse"] == 2 and prims["ln"] == 4
    pos = next(i for i, n in enumerate(graph.nodes) if n.primitive == "pos_enc")
    succ = graph.real_edges[graph.real_edges[:, 0] == pos, 1]
    assert [graph.nodes[j].primitive for j in succ] == ["sum"]
    assert graph.nodes[pos].shape == (1, 16, 11, 11)
    msa = [i for i, n in enumerate(graph.nodes) if n.primitive == "msa"]
    preds = {graph.nodes[s].param for s, d in graph.real_edges[:, :2] if d == msa[0]}
    assert any(p.endswith("attn.qkv.weight") for p in preds)


def test_zero_operations_and_unread_cells_build_no_parameters():
    # Node 2 = zero(0) + zero(1) is dead; node 3 reads only state 0, so state 1 (the previous cell) is unread.
    genotype = deepnets.Genotype(
        normal=(("none", 0), ("none", 1), ("conv_3x3", 0), ("none", 2)),
        normal_concat=(2, 3),
        reduce=(("none", 0), ("none", 1), ("conv_3x3", 0), ("none", 2)),
        reduce_concat=(2, 3),
    )
    net = deepnets.Network(genotype, n_cells=6, channels=16)
    assert any(isinstance(c, deepnets.net.DeadCell) for c in net.cells)
    graph = build_graph(net)
    assert not graph.uncovered
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    dead = deepnets.Genotype(
        normal=(("none", 0), ("none", 1)), normal_concat=(2,), reduce=(("none", 0), ("none", 1)), reduce_concat=(2,)
    )
    with pytest.raises(ValueError, match="no path"):
        deepnets.Network(dead, n_cells=4)


def test_darts_network():
    net = deepnets.darts(num_classes=10, cells=14, channels=48, stem="cifar")
    assert len(net.cells) == 14 and net.genotype == deepnets.DARTS
    assert net.cells[0].preprocess1[1].in_channels == 3 * 48  # CIFAR stem: 3C channels
    reductions = [i for i, c in enumerate(net.cells) if isinstance(c.ops[str(0)], torch.nn.MaxPool2d)]
    assert reductions == [4, 9]
    assert net.classifier[-1].in_features == 4 * 48 * 4
    with torch.no_grad():
        assert net.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    graph = build_graph(net)
    assert not graph.uncovered and graph.classifier == (len(graph) - 2, len(graph) - 1)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats for m in net.modules())
    imagenet = deepnets.darts(num_classes=1000, cells=14, channels=48, stem="imagenet")
    assert imagenet.image_size == 224


def test_parse_operation():
    assert deepnets.parse_operation("sep_conv_5x5") == ("sep_conv", 5)
    assert deepnets.parse_operation("conv_7x1_1x7") == ("conv2", 7)
    assert deepnets.parse_operation("msa") == ("msa", 0)
    assert deepnets.parse_operation("max_pool_3x3") == ("max_pool", 3)


def test_spec_round_trip():
    spec = deepnets.generate("train", 3)
    assert deepnets.ArchSpec.from_dict(spec.to_dict()) == spec


def test_stats_cli(capsys):
    assert deepnets_cli(["stats", "--split", "deep", "-n", "4", "--no-nodes"]) == 0
    out = capsys.readouterr().out
    assert "| cells |" in out and "10-36" in out
    assert deepnets_cli(["stats", "--split", "test", "-n", "2", "--json"]) == 0
    assert '"graph nodes"' in capsys.readouterr().out
    assert deepnets_cli(["show", "--split", "train", "-i", "0", "2"]) == 0
    assert capsys.readouterr().out.count("train[") == 2
