"""Every input of ``forward`` on the traced path (issue 28 rows 1, 3 and 10).

Row 1: a second input (a text tower beside an image tower) is traced too, whether it defaults to
``None`` (symbolic tracing) or is required (tracing with an example input, its value guessed from
the layer it feeds); an input that cannot be guessed is named in a warning with the parameters
it leaves out; a ``mask=None`` that would drop the head stays fixed. Row 3: tiny Hugging Face
text, audio and video models built from configs get their inputs from the config. Row 10: torch.fx's
failures are said in plain words, with what is tried next.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
from conftest import LOCAL_FIXTURES

import ghninit
from ghninit.errors import TraceError
from ghninit.graph.build import build_graph
from ghninit.graph.trace import SymbolicTraceError, trace

GHN_FILE = LOCAL_FIXTURES / "ghn2_cifar10_random.safetensors"
UNUSED = "not used on the path to the output"


class ImageTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 16)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class TextTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 16)

    def forward(self, tokens):
        return self.fc(self.emb(tokens).mean(1))


class OptionalText(nn.Module):
    """CLIP-like: both inputs default to None; fx can trace it."""

    def __init__(self):
        super().__init__()
        self.image, self.text = ImageTower(), TextTower()

    def forward(self, image=None, text=None):
        f = self.image(image) if image is not None else None
        g = self.text(text) if text is not None else None
        if g is None:
            return f
        if f is None:
            return g
        return f @ g.T


class RequiredText(OptionalText):
    """Both inputs required, and a branch on a value: fx cannot trace it, so it runs on an example."""

    def forward(self, image, text):
        f = self.image(image)
        if f.sum() > -1e9:
            f = f * 1
        return f @ self.text(text).T


class UnguessableExtra(nn.Module):
    """The second input is a dict: no guessed tensor fits, so it is named in a warning."""

    def __init__(self):
        super().__init__()
        self.image = ImageTower()
        self.proj = nn.Linear(5, 16)

    def forward(self, image, extra=None):
        f = self.image(image)
        if f.sum() > -1e9:
            f = f * 1
        if extra is not None:
            f = f + self.proj(extra["features"])
        return f


class MaskDropsHead(nn.Module):
    """Hiera-like: with a mask the head is skipped, so tracing ``mask`` as an input loses parameters."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)
        self.mask_proj = nn.Linear(8, 8)

    def forward(self, x, mask=None):
        x = self.body(x)
        if mask is None:
            return self.head(x)
        return self.mask_proj(x * mask)


def _unused(graph) -> set[str]:
    return {name for name, why in graph.uncovered.items() if UNUSED in why}


def _covered(graph) -> set[str]:
    return {n.param for n in graph.nodes if n.param}


def test_a_second_input_defaulting_to_none_is_traced_symbolically():
    graph = build_graph(OptionalText())
    assert graph.tracing == "symbolic"
    assert {"text.fc.weight", "image.fc.weight", "image.conv.weight"} <= _covered(graph)
    assert not _unused(graph)
    assert "text" in graph.inputs and "image" in graph.inputs


def test_a_required_second_input_is_guessed_from_the_layer_it_feeds():
    model = RequiredText()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning: every input was found
        graph = build_graph(model)
    assert graph.tracing == "example input"
    assert "text.fc.weight" in _covered(graph) and not _unused(graph)
    assert "text: int64 (1, 16) in [0, 50) for layer 'text.emb' (Embedding)" in graph.inputs
    report = ghninit.initialize(model, ghn=str(GHN_FILE))
    assert "inputs inferred: " in str(report) and UNUSED not in report.skipped.get("text.fc.weight", "")


def test_an_input_that_cannot_be_guessed_is_named_in_a_warning():
    with pytest.warns(UserWarning, match=r"argument\(s\) 'extra' could not be traced") as record:
        graph = build_graph(UnguessableExtra())
    message = str(next(w.message for w in record if "'extra'" in str(w.message)))
    assert "proj.weight" in message and "proj.bias" in message and "example_inputs=" in message
    assert _unused(graph) == {"proj.weight", "proj.bias"}


def test_an_optional_argument_that_loses_layers_stays_at_its_default():
    model = MaskDropsHead()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # mask traced fine: not the reason, no warning
        graph = build_graph(model)
    assert "head.weight" in _covered(graph) and _unused(graph) == {"mask_proj.weight", "mask_proj.bias"}
    assert graph.inputs is None


def test_given_example_inputs_are_not_extended():
    model = OptionalText()
    graph = build_graph(model, example_inputs=(torch.rand(1, 3, 16, 16),))
    assert _unused(graph) == {"text.emb.weight", "text.fc.weight", "text.fc.bias"} and graph.inputs is None


# Row 3: Hugging Face models, tiny configs, no downloads
transformers = pytest.importorskip("transformers")

_TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def _hf_models():
    """(kind, model maker, inputs a user would pass, what the guess must say)."""
    t = transformers
    ids = torch.randint(0, 100, (1, 8))
    yield "text", lambda: t.BertModel(t.BertConfig(vocab_size=100, **_TINY)), {"input_ids": ids}, "vocab_size"
    conv = dict(conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4)
    yield "audio", lambda: t.Wav2Vec2Model(t.Wav2Vec2Config(**conv, num_conv_pos_embedding_groups=2, **_TINY)), (
        {"input_values": torch.randn(1, 4000)}
    ), "raw waveform"
    yield "spectrogram", lambda: t.ASTModel(t.ASTConfig(num_mel_bins=16, max_length=32, patch_size=8, **_TINY)), (
        {"input_values": torch.randn(1, 32, 16)}
    ), "num_mel_bins"
    yield "video", lambda: t.VideoMAEModel(
        t.VideoMAEConfig(image_size=16, patch_size=8, num_frames=4, tubelet_size=2, **_TINY)
    ), {"pixel_values": torch.randn(1, 4, 3, 16, 16)}, "num_frames"
    enc_dec = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2)
    enc_dec.update(decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)
    tokens = dict(pad_token_id=1, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    yield "speech-to-text", lambda: t.WhisperModel(
        t.WhisperConfig(vocab_size=100, num_mel_bins=8, max_source_positions=8, max_target_positions=8, **enc_dec, **tokens)
    ), {"input_features": torch.randn(1, 8, 16), "decoder_input_ids": ids}, "max_source_positions"


@pytest.mark.parametrize("kind,make,given,said", [pytest.param(*m, id=m[0]) for m in _hf_models()])
def test_hugging_face_inputs_come_from_the_config(kind, make, given, said):
    """Without example_inputs, the graph covers what it covers with the inputs a user would pass."""
    torch.manual_seed(0)
    model = make()
    graph = build_graph(model)
    assert graph.tracing == "example input"
    assert all(name in graph.inputs for name in given) and said in graph.inputs  # what was guessed is said
    assert _covered(graph) == _covered(build_graph(model, example_inputs=given))
    assert len(_covered(graph)) > 4


def test_a_hugging_face_config_that_says_too_little_is_named_in_the_error():
    class NoVocab(nn.Module):
        main_input_name = "input_ids"

        def __init__(self):
            super().__init__()
            self.config = transformers.PretrainedConfig()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids):
            x = self.emb(input_ids)
            return x if x.sum() > 0 else -x

    with pytest.raises(TraceError) as info:
        build_graph(NoVocab())
    text = str(info.value)
    assert "main input 'input_ids' could not be made from its config" in text and "vocab_size" in text
    assert "torch.randn(1, 3, 224, 224)" not in text


# Row 10: fx's failures in plain words
def test_a_decorated_forward_is_explained_in_plain_words():
    model = transformers.BertModel(transformers.BertConfig(vocab_size=100, **_TINY))
    with pytest.raises(SymbolicTraceError) as info:
        trace(model)
    assert "wrapped by a decorator taking (*args, **kwargs)" in info.value.reason
    assert "torch.fx:" in info.value.reason  # fx's own words come last, for reference


def test_a_model_failing_both_ways_says_what_fx_could_not_do_and_what_was_tried_next():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:
                y = y.view(-1, 7, 7, 7)  # fails on the example too
            return y

    with pytest.raises(TraceError) as info:
        build_graph(Branchy())
    text = str(info.value)
    assert "branches on a value computed from the input" in text
    assert "Next, tracing with an example input inferred from the model" in text
    assert "one image (1, 3, 224, 224) (the first layer, 'conv', is a Conv2d)" in text
    assert "eval mode: RuntimeError" in text or "training mode: RuntimeError" in text


class BranchyText(nn.Module):
    """fx traces the image path but not the text tower (a branch on its values): the text is traced on an example."""

    def __init__(self):
        super().__init__()
        self.image, self.text = ImageTower(), TextTower()

    def forward(self, image, text=None):
        f = self.image(image)
        if text is None:
            return f
        g = self.text(text)
        if g.sum() > -1e9:
            g = g * 1
        return f @ g.T


def test_an_input_fx_cannot_take_is_traced_on_an_example_instead():
    graph = build_graph(BranchyText())
    assert graph.tracing == "example input" and not _unused(graph)
    assert "text: int64 (1, 16) in [0, 50) for layer 'text.emb' (Embedding)" in graph.inputs


def test_the_fallback_to_an_example_input_is_logged_in_plain_words(caplog):
    model = transformers.BertModel(transformers.BertConfig(vocab_size=100, **_TINY))
    with caplog.at_level("INFO", logger="ghninit"):
        build_graph(model)
    text = caplog.text
    assert "wrapped by a decorator" in text and "traced with an example input instead: input_ids" in text
