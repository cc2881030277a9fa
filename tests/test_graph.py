"""Graph rules: which ops become nodes, how layers are wired, virtual edges and depth levels."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ghninit
from ghninit.graph.build import shortest_path_lengths


def prims(graph):
    return [n.primitive for n in graph.nodes]


def edge_set(graph, virtual=False):
    edges = graph.edges if virtual else graph.real_edges
    return {(graph.nodes[s].name, graph.nodes[d].name) for s, d, _ in edges.tolist()}


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = x + self.conv2(x)  # sum with two distinct inputs: kept
        x = x + 1.0  # sum with one input: dropped
        x = x.mean((2, 3))  # mean without keepdim: dropped
        return self.fc(x)


def test_sum_kept_only_with_two_inputs_and_bias_nodes():
    g = ghninit.build_graph(Residual())
    assert prims(g) == ["input", "conv", "bn", "conv", "bias", "sum", "conv", "bias"]
    e = edge_set(g)
    assert ("conv2.weight", "conv2.bias") in e  # weight -> bias
    sum_name = g.nodes[5].name
    assert {("conv2.bias", sum_name), ("bn.weight", sum_name), ("bn.weight", "conv2.weight")} <= e
    assert (g.nodes[0].name, "conv.weight") in e and (sum_name, "fc.weight") in e
    assert g.classifier == (6, 7)  # Linear weight then bias, last


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.pool = nn.MaxPool2d(3, 2)
        self.avg = nn.AvgPool2d((2, 3))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10, bias=False)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)  # two inputs: concat kept
        y = torch.cat([y], 1)  # one input: dropped
        y = self.avg(self.pool(y))
        y = y.mean((2, 3), keepdim=True) + self.gap(y)
        return self.fc(torch.flatten(y, 1))


def test_concat_pooling_shapes_and_glob_avg():
    g = ghninit.build_graph(Concat())
    assert prims(g) == [
        "input",
        "conv",
        "conv",
        "concat",
        "max_pool",
        "avg_pool",
        "glob_avg",
        "glob_avg",
        "sum",
        "conv",
    ]
    assert g.nodes[4].shape == (1, 1, 3, 3)
    assert g.nodes[5].shape == (1, 1, 2, 3)
    assert g.classifier == (9, None)  # the bias-free Linear that produces the output is the classifier


class SE(nn.Module):
    """A squeeze-and-excitation block; ``reshaped`` computes the gate as DeepNets-1M does."""

    def __init__(self, gate, reshaped):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 8)
        self.gate, self.reshaped = gate, reshaped
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        s = self.gate(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        x = x * (s.view(s.shape[0], s.shape[1], 1, 1) if self.reshaped else s.unsqueeze(-1).unsqueeze(-1))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("gate", [nn.Hardswish(), nn.Hardsigmoid()])
def test_squeeze_excite_with_hard_gate_is_cse(gate):
    g = ghninit.build_graph(SE(gate, reshaped=True))
    assert prims(g).count("cse") == 1
    cse = g.nodes[prims(g).index("cse")].name
    assert {("fc2.bias", cse), ("conv.bias", cse), (cse, "head.weight")} <= edge_set(g)


def test_squeeze_excite_dropped_with_plain_or_direct_gate():
    for model in (SE(nn.Sigmoid(), reshaped=True), SE(nn.Hardsigmoid(), reshaped=False)):
        g = ghninit.build_graph(model)
        assert "cse" not in prims(g)
        # the dropped product wires both of its inputs to its consumer
        assert {("fc2.bias", "head.weight"), ("conv.bias", "head.weight")} <= edge_set(g)


def test_torchvision_mobilenet_v3_gate_is_dropped_as_in_the_reference():
    import torchvision

    assert "cse" not in prims(ghninit.build_graph(torchvision.models.mobilenet_v3_small()))


def test_depthwise_dilated_and_norm_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.Conv2d(8, 8, 3, groups=8, bias=False),
        nn.Conv2d(8, 8, 3, groups=8, dilation=2, bias=False),
        nn.GroupNorm(2, 8),
        nn.LayerNorm([8, 1, 1]),
        nn.BatchNorm2d(8, affine=False),
    )
    g = ghninit.build_graph(model)
    assert prims(g) == ["input", "conv", "sep_conv", "dil_conv", "ln"]
    assert g.nodes[-1].bias == "4.bias"
    assert set(g.uncovered) == {"3.weight", "3.bias"}
    assert "GroupNorm" in g.uncovered["3.weight"]


def test_shared_weights_are_one_node():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    g = ghninit.build_graph(Twice())
    assert prims(g) == ["input", "conv", "bias", "conv", "bias"]
    assert (g.real_edges[:, 0] < g.real_edges[:, 1]).all()


def test_virtual_edges_match_networkx_shortest_paths():
    g = ghninit.build_graph(Residual())
    real = nx.DiGraph([(int(s), int(d)) for s, d, _ in g.real_edges])
    want = {
        (u, v, d)
        for u, lengths in nx.all_pairs_shortest_path_length(real, cutoff=50)
        for v, d in lengths.items()
        if d >= 1
    }
    assert {tuple(e) for e in g.edges.tolist()} == want


def test_virtual_edge_cutoff():
    n = 60
    chain = np.array([[i, i + 1] for i in range(n - 1)])
    dist = shortest_path_lengths(n, chain, cutoff=50)
    assert dist[0, 50] == 50 and np.isinf(dist[0, 51]) and np.isinf(dist[5, 0])


def test_depth_levels_have_no_internal_edges_and_cover_all_nodes():
    import torchvision

    g = ghninit.build_graph(torchvision.models.resnet18())
    for reverse in (False, True):
        levels = g.depth_levels(reverse)
        assert sorted(np.concatenate(levels).tolist()) == list(range(len(g)))
        where = np.empty(len(g), dtype=int)
        for i, level in enumerate(levels):
            where[level] = i
        s, d = g.real_edges[:, 0], g.real_edges[:, 1]
        assert (where[s] < where[d]).all() if not reverse else (where[d] < where[s]).all()


def test_networkx_export():
    g = ghninit.build_graph(Residual())
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g) and nxg.number_of_edges() == len(g.edges)
    assert nxg.nodes[0]["primitive"] == "input"
    assert g.to_networkx(virtual=False).number_of_edges() == len(g.real_edges)


def test_untraceable_module_is_named_with_a_fix():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.branchy = DataDependent()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.branchy(self.conv(x)).mean((2, 3)))

    from ghninit.graph.trace import trace

    with pytest.raises(ghninit.TraceError, match=r"'branchy'.*DataDependent(.|\n)*leaf_modules"):
        trace(Net())  # symbolic tracing alone; build_graph then traces with an example input
    assert ghninit.build_graph(Net()).tracing == "example input"
    g = ghninit.build_graph(Net(), leaf_modules=[DataDependent])
    assert prims(g) == ["input", "conv", "bias", "conv", "bias"]


def test_multihead_attention_is_an_msa_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            y = self.ln(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return self.head(x[:, 0])

    g = ghninit.build_graph(Block())
    assert prims(g) == ["input", "ln", "conv", "bias", "msa", "conv", "bias", "sum", "conv", "bias"]
    assert g.nodes[2].name == "attn.in_proj_weight" and g.nodes[5].name == "attn.out_proj.weight"


def test_timm_untraceable_conv_mlp_is_described_by_a_rule():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vgg11", pretrained=False, num_classes=10)
    g = ghninit.build_graph(model)
    names = [n.name for n in g.nodes]
    assert names.index("pre_logits.fc1.weight") < names.index("pre_logits.fc2.weight") < names.index("head.fc.weight")
    assert not any(name.startswith("pre_logits") for name in g.uncovered)
