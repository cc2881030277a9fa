"""Layer rules and honest reports (issue 28, rows 6-9): 1-D convolutions, transposed linears, skip
reasons, the classifier, and every name of a tied parameter.

Small models made here (plain torch, and tiny Hugging Face models built from a config: transformers
is a test dependency), and the random-weight CIFAR-10 GHN-2 of tests/fixtures.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import LOCAL_FIXTURES, init_quietly

import ghninit
from ghninit.graph.build import GHN3_RULES, NOT_USED, build_graph
from ghninit.report import COLLAPSE_RULE
from ghninit.write.tensors import collapse, tile

GHN_PATH = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"


@pytest.fixture(scope="module")
def ghn():
    return ghninit.load_ghn(GHN_PATH)


_init = init_quietly


def _described(graph) -> list[tuple]:
    """What the GHN reads of a graph: each node's primitive and shape, and the real edges."""
    return [(n.primitive, n.shape) for n in graph.nodes], graph.real_edges.tolist()


# ------------------------------------------------------------------------------------------------
# row 9: nn.Conv1d, as the square 2-D kernel of a Conv2d with the same channels


class Speech(nn.Module):
    """A small wav2vec2-like feature encoder: strided Conv1d, a depthwise and a dilated one, a head."""

    def __init__(self, conv=nn.Conv1d, norm=nn.BatchNorm1d, pool=nn.AdaptiveAvgPool1d):
        super().__init__()
        self.stem = conv(1, 16, 10, stride=5, bias=False)
        self.bn = norm(16)
        self.mix = conv(16, 32, 3, stride=2)
        self.depthwise = conv(32, 32, 3, groups=32, padding=1)
        self.dilated = conv(32, 32, 3, groups=32, dilation=2, padding=2)
        self.pool = pool(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.gelu(self.bn(self.stem(x)))
        x = F.gelu(self.mix(x))
        x = self.dilated(self.depthwise(x)) + x
        return self.fc(self.pool(x).flatten(1))


def test_conv1d_graph_is_that_of_the_square_conv2d():
    one_d = build_graph(Speech())
    two_d = build_graph(Speech(nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d))
    assert _described(one_d) == _described(two_d)
    kinds = {n.param: (n.primitive, n.shape) for n in one_d.nodes if n.param}
    assert kinds["stem.weight"] == ("conv", (16, 1, 10, 10))
    assert kinds["depthwise.weight"] == ("sep_conv", (32, 1, 3, 3))
    assert kinds["dilated.weight"] == ("dil_conv", (32, 1, 3, 3))
    assert kinds["mix.bias"] == ("bias", (32,))
    assert not one_d.uncovered


def test_collapse_is_the_1d_convolution_the_2d_one_computes_on_equal_rows():
    torch.manual_seed(0)
    kernel, signal = torch.randn(4, 3, 5, 5), torch.randn(2, 3, 40)
    image = signal[:, :, None, :].expand(-1, -1, 5, -1)  # every row the same signal
    torch.testing.assert_close(F.conv2d(image, kernel)[:, :, 0], F.conv1d(signal, collapse(kernel, 5)))
    block = kernel[:, :, :2, :2]  # a block smaller than the kernel repeats, rows and columns
    torch.testing.assert_close(tile(collapse(block, 5), (4, 3, 5)), tile(block, (4, 3, 5, 5)).sum(2))
    with pytest.raises(ValueError, match="expects a 2-D kernel"):
        collapse(torch.randn(4, 3, 5), 5)


def test_conv1d_is_predicted_as_the_row_sum_of_the_2d_prediction(ghn):
    model = Speech()
    twin = build_graph(Speech(nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d), virtual_edge_cutoff=50)
    with torch.no_grad():
        square = ghn(twin, ghn.classifier_matches(twin))  # the 2-D twin's full predicted kernels
    report = _init(model, ghn)
    assert sorted(report.collapsed) == ["depthwise.weight", "dilated.weight", "mix.weight", "stem.weight"]
    assert not report.skipped and report.fraction_predicted == 1.0
    assert COLLAPSE_RULE in str(report)
    for name in report.collapsed:
        torch.testing.assert_close(model.get_parameter(name).detach(), square[name].sum(2))
    assert torch.equal(model.fc.weight.detach(), square["fc.weight"])


def test_conv1d_under_ghn3_is_the_row_sum_of_its_2d_twin():
    ghn3 = ghninit.GHN3(max_shape=(16, 16, 16, 16), hid=16, layers=1, heads=4, num_classes=10)
    model, twin = Speech(), Speech(nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
    assert _described(build_graph(model, rules=GHN3_RULES)) == _described(build_graph(twin, rules=GHN3_RULES))
    report, _ = _init(model, ghn3), _init(twin, ghn3)
    assert len(report.collapsed) == 4
    for name in report.collapsed:
        torch.testing.assert_close(model.get_parameter(name).detach(), twin.get_parameter(name).detach().sum(2))


# ------------------------------------------------------------------------------------------------
# row 9: a linear layer stored (in, out) and applied as addmm(bias, x, weight), as HF's Conv1D


class AddmmLinear(nn.Module):
    """A linear layer written as Hugging Face's ``Conv1D`` is, on 2-D inputs: weight ``(in, out)``, ``addmm``."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


class Mlp(nn.Module):
    def __init__(self, linear=AddmmLinear):
        super().__init__()
        self.up = linear(24, 48)
        self.down = linear(48, 24)  # square after tiling to the GHN's 64 channels: the layout must be right
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.norm(x + self.down(F.gelu(self.up(x)))))


def _hf_conv1d(n_in: int, n_out: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(n_out, n_in)  # Conv1D(nf, nx): nf outputs, nx inputs


def _check_transposed_twin(model: nn.Module, twin: nn.Module) -> None:
    for name in ("up", "down"):
        mine, reference = model.get_submodule(name), twin.get_submodule(name)
        assert mine.weight.shape == reference.weight.shape[::-1]
        assert torch.equal(mine.weight.detach(), reference.weight.detach().t())
        assert torch.equal(mine.bias.detach(), reference.bias.detach())


def test_addmm_linear_is_described_and_predicted_as_nn_linear(ghn):
    model, twin = Mlp(), Mlp(nn.Linear)
    graph, twin_graph = build_graph(model), build_graph(twin)
    assert _described(graph) == _described(twin_graph)
    assert sorted(graph.transposed) == ["down.weight", "up.weight"]
    assert {n.primitive for n in graph.nodes if n.param in ("up.weight", "down.weight")} == {"conv"}
    report, twin_report = _init(model, ghn), _init(twin, ghn)
    assert not report.skipped and report.fraction_predicted == 1.0
    assert report.predicted == twin_report.predicted
    _check_transposed_twin(model, twin)


def test_transformers_conv1d_is_described_and_predicted_as_nn_linear():
    # Conv1D reshapes with x.size(): GHN-2 graphs carry shape edges (so differ from nn.Linear's in
    # edges); GHN-3 graphs have none, so its graph and predictions are nn.Linear's, transposed.
    x = torch.randn(2, 5, 24)
    model, twin = Mlp(_hf_conv1d), Mlp(nn.Linear)
    graph = build_graph(model, example_inputs=x)
    assert [(n.primitive, n.shape) for n in graph.nodes] == _described(build_graph(twin, example_inputs=x))[0]
    ghn3 = ghninit.GHN3(max_shape=(16, 16, 16, 16), hid=16, layers=1, heads=4, num_classes=10)
    assert _described(build_graph(model, rules=GHN3_RULES, example_inputs=x)) == _described(
        build_graph(twin, rules=GHN3_RULES, example_inputs=x)
    )
    torch.manual_seed(0)
    report = _init(model, ghn3, example_inputs=x)
    torch.manual_seed(0)
    _init(twin, ghn3, example_inputs=x)
    assert not report.skipped
    _check_transposed_twin(model, twin)


def test_tiny_gpt2_conv1d_layers_are_predicted(ghn):
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = _init(model, ghn, example_inputs={"input_ids": torch.randint(0, 100, (1, 8))})
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 4
    for path in conv1d:
        assert f"{path}.weight" in report.predicted and f"{path}.bias" in report.predicted
        assert not torch.equal(model.get_parameter(f"{path}.weight"), before[f"{path}.weight"])
    assert set(report.skipped) == {"wte.weight", "wpe.weight"}
    assert set(report.skipped.values()) == {"no GHN rule for torch.nn.Embedding"}


# ------------------------------------------------------------------------------------------------
# row 6: a layer that ran is "no GHN rule for <class>"; only what did not run is "not used"


class RMSNorm(nn.Module):
    """A norm that uses its weight functionally (T5's layer norm): traced into, no op has a rule."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class MatmulLinear(nn.Module):
    """A bias-free linear map applied with ``@``: no GHN rule describes it."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

    def forward(self, x):
        return x @ self.weight


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.bilinear = nn.Bilinear(16, 16, 16)
        self.norm = RMSNorm(16)
        self.proj = MatmulLinear(16, 128)
        self.head = nn.Linear(128, 10)
        self.unused = nn.Linear(16, 16)  # built, never called
        self.pooler = nn.Linear(16, 16)  # called, but its output is not returned

    def forward(self, ids):
        h = self.embed(ids)
        h = self.norm(self.bilinear(h, h))
        self.pooler(h)
        return self.head(self.proj(h).mean(1))


def test_skip_reasons_name_the_class_without_a_rule(ghn):
    model = Mixed()
    report = _init(model, ghn, example_inputs=torch.randint(0, 50, (2, 7)))
    here = f"{__name__}"
    assert report.skipped == {
        "embed.weight": "no GHN rule for torch.nn.Embedding",
        "bilinear.weight": "no GHN rule for torch.nn.Bilinear",
        "bilinear.bias": "no GHN rule for torch.nn.Bilinear",
        "norm.weight": f"no GHN rule for {here}.RMSNorm",
        "proj.weight": f"no GHN rule for {here}.MatmulLinear",
        "unused.weight": NOT_USED,
        "unused.bias": NOT_USED,
        "pooler.weight": NOT_USED,
        "pooler.bias": NOT_USED,
    }
    assert set(report.predicted) == {"head.weight", "head.bias"}


class MostlyMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = MatmulLinear(32, 256)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(self.proj(x.flatten(1)[:, :32]))


def test_low_coverage_warning_counts_layers_without_a_rule(ghn):
    expected = rf"only \d+\.\d% .*: MatmulLinear at proj \(8,192 parameters: no GHN rule for {__name__}\.MatmulLinear\)"
    with pytest.warns(UserWarning, match=expected):
        report = ghninit.initialize(MostlyMatmul(), ghn=ghn)
    assert report.skipped_families[0] == ("MatmulLinear", f"no GHN rule for {__name__}.MatmulLinear", 8192)


# ------------------------------------------------------------------------------------------------
# row 7: the classifier is the layer that produces the output, or none


class BiasAdded(nn.Module):
    """GAT-like: bias-free linear layers, the output layer's bias added as a plain tensor."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.first = nn.Linear(16, 32, bias=False)
        self.out = nn.Linear(32, classes, bias=False)
        self.out_bias = nn.Parameter(torch.zeros(classes))

    def forward(self, x):
        return self.out(F.elu(self.first(x))) + self.out_bias


class SecondInputFirst(nn.Module):
    """The first Linear (in graph order) reads a second input; the output layer is ``out``."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.edge = nn.Linear(4, 32, bias=False)
        self.node = nn.Linear(16, 32, bias=False)
        self.out = nn.Linear(32, classes, bias=False)

    def forward(self, x, e):
        gate = torch.sigmoid(self.edge(e))
        return self.out(self.node(x) * gate)


class SumOfTwo(nn.Module):
    """GraphSAGE-like: the output is the sum of two Linears (one bias-free)."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.hidden = nn.Linear(16, 32)
        self.lin_l = nn.Linear(32, classes)
        self.lin_r = nn.Linear(32, classes, bias=False)

    def forward(self, x):
        h = F.relu(self.hidden(x))
        return self.lin_l(h.mean(0, keepdim=True).expand_as(h)) + self.lin_r(h)


@pytest.mark.parametrize(
    ("model", "inputs", "head"),
    [
        (BiasAdded(), (torch.randn(5, 16),), "out.weight"),
        (SecondInputFirst(), (torch.randn(5, 16), torch.randn(5, 4)), "out.weight"),
        (SumOfTwo(), (torch.randn(5, 16),), None),
    ],
    ids=["bias-added", "second-input-first", "sum-of-two"],
)
def test_classifier_is_the_layer_that_produces_the_output(ghn, model, inputs, head):
    graph = build_graph(model, example_inputs=inputs)
    weight, bias = graph.classifier
    assert (graph.nodes[weight].param if weight is not None else None) == head
    assert bias is None
    report = _init(model, ghn, example_inputs=inputs)  # 7 classes, the GHN has 10: a classifier is kept
    kept = sorted(n for n, why in report.skipped.items() if why.startswith("classifier kept"))
    assert kept == ([head] if head else [])
    assert report.classifier_predicted is False
    assert set(report.predicted) | set(report.skipped) == {n for n, _ in model.named_parameters()}


def test_output_layer_with_its_bias_is_the_classifier():
    graph = build_graph(SumOfTwo())
    assert graph.classifier == (None, None)
    graph = build_graph(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)))
    assert [graph.nodes[i].param for i in graph.classifier] == ["2.weight", "2.bias"]
    graph = build_graph(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10), nn.LayerNorm(10)))
    assert graph.classifier == (None, None)  # the output ends at a norm layer


# ------------------------------------------------------------------------------------------------
# row 8: every name of every parameter is in the report


class TiedHead(nn.Module):
    """A language-model-like net: the output layer's weight is the embedding's (tied)."""

    def __init__(self, vocab: int = 40):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.body = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.body(self.embed(ids))))


class SharedTwice(nn.Module):
    """One block under two names, called twice, and a T5-like embedding shared by two towers."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Embedding(30, 16)
        self.enc_embed = self.shared
        self.dec_embed = self.shared
        self.block = nn.Linear(16, 16)
        self.again = self.block
        self.head = nn.Linear(16, 10)

    def forward(self, ids):
        h = self.again(torch.relu(self.block(self.enc_embed(ids)))) + self.dec_embed(ids)
        return self.head(h.mean(1))


def _tiny_t5():
    from transformers import T5Config, T5Model

    config = T5Config(num_layers=1, num_decoder_layers=1, d_model=16, d_ff=32, d_kv=8, num_heads=2, vocab_size=40)
    ids = torch.randint(0, 40, (1, 6))
    return T5Model(config), {"input_ids": ids, "decoder_input_ids": ids}


def _tiny_gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16)
    return GPT2LMHeadModel(config), {"input_ids": torch.randint(0, 40, (1, 6))}


@pytest.mark.parametrize(
    "make",
    [
        lambda: (TiedHead(), torch.randint(0, 40, (2, 5))),
        lambda: (TiedHead(vocab=10), torch.randint(0, 10, (2, 5))),  # 10 classes: the tied head is predicted
        lambda: (SharedTwice(), torch.randint(0, 30, (2, 5))),
        _tiny_t5,
        _tiny_gpt2_lm,
    ],
    ids=["tied-head-kept", "tied-head-predicted", "shared-twice", "t5", "gpt2-lm"],
)
def test_every_parameter_name_is_in_the_report(ghn, make):
    model, inputs = make()
    report = _init(model, ghn, example_inputs=inputs)
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    tied = [g for g in groups.values() if len(g) > 1]
    assert tied, "each model here has a tied parameter"
    predicted = set(report.predicted)
    for group in groups.values():
        done = [n for n in group if n in predicted]
        assert len(done) <= 1, f"{group} predicted twice"
        if done:
            assert not any(n in report.skipped for n in group)
        else:  # kept: every name in skipped, with one reason
            assert all(n in report.skipped for n in group), group
            assert len({report.skipped[n] for n in group}) == 1
        if len(group) > 1:  # every tie listed once, under the name predicted (else its first)
            first = done[0] if done else group[0]
            assert sorted(report.shared[first]) == sorted(n for n in group if n != first)
    assert len(report.shared) == len(tied)
    assert report.n_params_total == sum(p.numel() for p in model.parameters())


def test_kept_tied_embedding_reason_is_that_of_the_layer_that_ran(ghn):
    model, inputs = _tiny_t5()
    report = _init(model, ghn, example_inputs=inputs)
    for name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        assert report.skipped[name] == "no GHN rule for torch.nn.Embedding"
    assert not [n for n, why in report.skipped.items() if why == NOT_USED]
    assert "tied: shared.weight kept, shared with encoder.embed_tokens.weight" in str(report)


class FunctionalConv1d(nn.Module):
    """A Conv1d whose weight is used functionally (``F.conv1d(x, self.conv.weight, ...)``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 5)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(F.conv1d(x, self.conv.weight, self.conv.bias).mean(-1))


def test_functional_conv1d_is_predicted_as_the_module(ghn):
    graph = build_graph(FunctionalConv1d())
    node = next(n for n in graph.nodes if n.param == "conv.weight")
    assert (node.primitive, node.shape) == ("conv", (8, 3, 5, 5)) and not graph.uncovered
    report = _init(FunctionalConv1d(), ghn)
    assert report.collapsed == ["conv.weight"] and not report.skipped
