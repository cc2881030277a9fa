"""Hugging Face text, audio and video models (tiny configs, random weights) initialised without ``example_inputs=``.

Each model is built from a small config (nothing downloaded) and passed to
``ghninit.initialize(model, "cifar10-mini")``; one line per model: % of parameters predicted, how it
was traced, and what inputs were inferred (or the error). ``--open-clip`` adds open_clip's CLIP models
(random weights; needs ``open_clip_torch``, not a dependency of ghninit). Used for docs/tracing.md,
"Inputs inferred":

    OMP_NUM_THREADS=1 python benchmarks/inputs_inferred.py [--open-clip] [NAME_SUBSTRING ...]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2)
_SEQ2SEQ.update(encoder_ffn_dim=64, decoder_ffn_dim=64)
_TOKENS = dict(pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
_CONV = dict(conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16)
_CONV.update(num_conv_pos_embedding_groups=2)


_DECODER = dict(
    vocab_size=500,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
)


def hf_models() -> Iterator[tuple[str, Callable[[], torch.nn.Module]]]:
    """(name, maker) of tiny Hugging Face models: text, audio, video, image, image + text."""
    import transformers as T

    yield "BertModel (text)", lambda: T.BertModel(T.BertConfig(vocab_size=500, **_TINY))
    yield "RobertaModel (text)", lambda: T.RobertaModel(T.RobertaConfig(vocab_size=500, **_TINY))
    yield (
        "DistilBertModel (text)",
        lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=500, dim=32, n_layers=2, n_heads=2, hidden_dim=64)),
    )
    yield (
        "GPT2Model (text)",
        lambda: T.GPT2Model(
            T.GPT2Config(vocab_size=500, n_embd=32, n_layer=2, n_head=2, bos_token_id=1, eos_token_id=2)
        ),
    )
    yield (
        "T5Model (text, encoder-decoder)",
        lambda: T.T5Model(T.T5Config(vocab_size=500, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2)),
    )
    yield "LlamaForCausalLM (text)", lambda: T.LlamaForCausalLM(T.LlamaConfig(**_DECODER))
    yield "Qwen2Model (text)", lambda: T.Qwen2Model(T.Qwen2Config(**_DECODER))
    yield "BartModel (text, encoder-decoder)", lambda: T.BartModel(T.BartConfig(vocab_size=500, **_SEQ2SEQ, **_TOKENS))
    yield "Wav2Vec2Model (audio)", lambda: T.Wav2Vec2Model(T.Wav2Vec2Config(**_CONV, **_TINY))
    yield "HubertModel (audio)", lambda: T.HubertModel(T.HubertConfig(**_CONV, **_TINY))
    yield "WavLMModel (audio)", lambda: T.WavLMModel(T.WavLMConfig(**_CONV, **_TINY))
    yield (
        "ASTModel (audio spectrogram)",
        lambda: T.ASTModel(T.ASTConfig(num_mel_bins=16, max_length=64, patch_size=8, **_TINY)),
    )
    yield "WhisperModel (audio, encoder-decoder)", lambda: T.WhisperModel(
        T.WhisperConfig(
            vocab_size=500, num_mel_bins=16, max_source_positions=32, max_target_positions=32, **_SEQ2SEQ,
            **{**_TOKENS, "bos_token_id": 1, "decoder_start_token_id": 3}, begin_suppress_tokens=None,
            suppress_tokens=None,
        )
    )  # fmt: skip
    yield (
        "Speech2TextModel (audio, encoder-decoder)",
        lambda: T.Speech2TextModel(
            T.Speech2TextConfig(vocab_size=500, input_feat_per_channel=16, conv_channels=32, **_SEQ2SEQ, **_TOKENS)
        ),
    )
    yield (
        "VideoMAEModel (video)",
        lambda: T.VideoMAEModel(T.VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, **_TINY)),
    )
    yield (
        "TimesformerModel (video)",
        lambda: T.TimesformerModel(T.TimesformerConfig(image_size=32, patch_size=8, num_frames=4, **_TINY)),
    )
    yield (
        "VivitModel (video)",
        lambda: T.VivitModel(T.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], **_TINY)),
    )
    yield "ViTModel (image)", lambda: T.ViTModel(T.ViTConfig(image_size=32, patch_size=8, **_TINY))
    text = dict(vocab_size=500, **_TINY)
    vision = dict(image_size=32, patch_size=8, **_TINY)
    yield (
        "CLIPModel (image + text)",
        lambda: T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)),
    )


def open_clip_models() -> Iterator[tuple[str, Callable[[], torch.nn.Module]]]:
    """open_clip CLIP models with random weights (two inputs: image and text)."""
    import open_clip

    for name in ("ViT-B-32", "convnext_base", "RN50"):
        yield f"open_clip {name} (image + text)", lambda name=name: open_clip.create_model(name, pretrained=None)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only models whose name contains one of these")
    parser.add_argument("--open-clip", action="store_true", help="add open_clip's CLIP models (needs open_clip_torch)")
    args = parser.parse_args(argv)
    names = args.names
    makers = list(hf_models()) + (list(open_clip_models()) if args.open_clip else [])
    print("| model | % predicted | tracing | seconds | inputs inferred or error |\n|---|---:|---|---:|---|")
    for name, make in makers:
        if names and not any(n in name for n in names):
            continue
        torch.manual_seed(0)
        model = make()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                report = ghninit.initialize(model, "cifar10-mini")
                row = f"{100 * report.fraction_predicted:.1f} | {report.tracing}"
                said = getattr(report, "inputs", None) or ""
            except Exception as err:  # one line per model, whatever fails
                row, said = "error | -", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        print(f"| {name} | {row} | {time.perf_counter() - start:.1f} | {said} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
