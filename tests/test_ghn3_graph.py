"""GHN-3 graph rules on small networks: each rule of GHN3_RULES, and GHN-2 graphs left as they were."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn

import ghninit
from ghninit.graph.build import GHN2_RULES, GHN3_RULES, build_graph


def _primitives(model: nn.Module, rules) -> Counter:
    return Counter(n.primitive for n in build_graph(model.eval(), rules=rules).nodes)


class FlatMeanNet(nn.Module):
    def __init__(self, gate: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.squeeze, self.excite = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)  # not named fc*: that is a head
        self.gate = gate
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if self.gate:  # squeeze-excitation with a sigmoid gate
            s = torch.sigmoid(self.excite(torch.relu(self.squeeze(x.mean((2, 3), keepdim=True)))))
            x = s * x
        return self.fc(x.mean([2, 3]))


def test_flattening_mean_is_a_pool_only_for_ghn3():
    assert _primitives(FlatMeanNet(), GHN2_RULES)["glob_avg"] == 0
    assert _primitives(FlatMeanNet(), GHN3_RULES)["glob_avg"] == 1


def test_gated_network_has_cse_and_only_the_head_pool():
    graph = build_graph(FlatMeanNet(gate=True).eval(), rules=GHN3_RULES)
    prims = Counter(n.primitive for n in graph.nodes)
    assert prims["cse"] == 1 and prims["glob_avg"] == 1
    names = [n.param or n.primitive for n in graph.nodes]
    edges = {(names[s], names[d]) for s, d, w in graph.edges.tolist() if w == 1}
    assert (
        ("conv.bias", "squeeze.weight") in edges
        and ("excite.bias", "cse") in edges
        and ("glob_avg", "fc.weight") in edges
    )
    assert _primitives(FlatMeanNet(gate=True), GHN2_RULES)["cse"] == 0  # GHN-2 keeps only hard-sigmoid gates


class Attention(nn.Module):
    def __init__(self, need_weights: bool):
        super().__init__()
        self.proj = nn.Conv2d(3, 32, 4, stride=4)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.need_weights = need_weights
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        n = x.shape[0]  # a shape read: an edge from the input for GHN-2's fx description only
        x = x + self.attn(x, x, x, need_weights=self.need_weights)[0].reshape(n, -1, 32)
        return self.head(x[:, 0])


def test_attention_without_weights_has_no_msa_node():
    assert _primitives(Attention(need_weights=True), GHN3_RULES)["msa"] == 1
    assert _primitives(Attention(need_weights=False), GHN3_RULES)["msa"] == 0
    assert _primitives(Attention(need_weights=False), GHN2_RULES)["msa"] == 1


class ConvHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 8, 3)
        self.classifier = nn.Sequential(nn.Conv2d(8, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x))).flatten(1)


def test_pool_moves_before_a_1x1_conv_classifier_and_it_is_predicted_4d():
    graph = build_graph(ConvHead().eval(), rules=GHN3_RULES)
    assert [n.primitive for n in graph.nodes[-3:]] == ["glob_avg", "conv", "bias"]
    weight = graph.nodes[-2]
    assert weight.shape == (10, 8) and weight.param_shape == (10, 8, 1, 1)
    assert graph.classifier == (len(graph) - 2, len(graph) - 1)
    ghn = ghninit.GHN3(max_shape=(16, 16, 16, 16), hid=16, layers=1, heads=4, num_classes=10)
    model = ConvHead()
    report = ghninit.initialize(model, ghn=ghn)
    assert report.classifier_predicted and set(report.predicted) == {n for n, _ in model.named_parameters()}
    ghn2_graph = build_graph(ConvHead().eval(), rules=GHN2_RULES)
    assert ghn2_graph.nodes[-1].primitive == "glob_avg" and all(n.param_shape is None for n in ghn2_graph.nodes)


def test_token_positional_embedding_is_predicted_for_ghn3_only():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 32, 4, stride=4)
            self.cls = nn.Parameter(torch.zeros(1, 1, 32))
            self.pos = nn.Parameter(torch.zeros(1, 17, 32))
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            x = self.proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
            return self.head((x + self.pos)[:, 0])

    model = Tokens()
    assert "pos" in build_graph(model, rules=GHN2_RULES).uncovered
    graph = build_graph(model, rules=GHN3_RULES)
    node = next(n for n in graph.nodes if n.primitive == "pos_enc")
    assert node.shape == (1, 32, 4, 4) and node.param_shape == (1, 17, 32) and "pos" not in graph.uncovered
    torch.manual_seed(0)
    ghn = ghninit.GHN3(max_shape=(16, 16, 16, 16), hid=16, layers=1, heads=4, num_classes=10)
    pos = ghn(graph)["pos"]
    assert pos.shape == (1, 17, 32)
    assert torch.equal(pos[0, 1:, :16], pos[0, 1:, 16:])  # 16 predicted channels tiled to 32
