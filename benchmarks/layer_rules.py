"""What ``initialize`` predicts and why it skips the rest, on models with 1-D convolutions,
Hugging Face ``Conv1D`` layers and tied embeddings (issue 28, rows 6-9).

Each model is built from a config with random weights (nothing is downloaded) and initialised by
the shipped ``cifar10-mini`` GHN with an example input. Printed per model: the share predicted,
whether the low-coverage warning fired, the skipped parameters grouped by module type and reason,
and how many parameter names (tied names included) the report does not account for.

    python benchmarks/layer_rules.py [gpt2 wav2vec2 wav2vec2-like wav2vec2-like-symbolic t5]

With ``PYTHONPATH`` pointing at an older checkout, the same script measures that code ("before").
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
import torch.nn as nn


class Wav2VecLike(nn.Module):
    """wav2vec2's feature encoder shape: 7 ``Conv1d`` (k 10, 3, 3, 3, 3, 2, 2), ``GroupNorm``, GELU, a head."""

    def __init__(self, channels: int = 64):
        super().__init__()
        layers, cin = [], 1
        for i, (k, s) in enumerate(zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))):
            norm = nn.GroupNorm(channels, channels) if i == 0 else nn.Identity()
            layers += [nn.Conv1d(cin, channels, k, s, bias=False), norm, nn.GELU()]
            cin = channels
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(channels)
        self.proj = nn.Linear(channels, 96)
        self.head = nn.Linear(96, 10)

    def forward(self, x):
        h = self.proj(self.norm(self.features(x).transpose(1, 2)))
        return self.head(h.mean(1))


def _models() -> dict:
    from transformers import GPT2Config, GPT2Model, T5Config, T5Model, Wav2Vec2Config, Wav2Vec2Model

    ids = torch.randint(0, 1000, (1, 16))
    t5 = {"d_model": 512, "d_ff": 2048, "d_kv": 64, "num_heads": 8, "num_layers": 6, "vocab_size": 32128}
    w2v = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    return {
        "gpt2": lambda: (GPT2Model(GPT2Config()), {"input_ids": ids}),
        "wav2vec2": lambda: (Wav2Vec2Model(Wav2Vec2Config(**w2v)), {"input_values": torch.randn(1, 16000)}),
        "wav2vec2-like": lambda: (Wav2VecLike(), torch.randn(1, 1, 4000)),
        "wav2vec2-like-symbolic": lambda: (Wav2VecLike(), None),
        "t5": lambda: (T5Model(T5Config(**t5)), {"input_ids": ids, "decoder_input_ids": ids}),
    }


def measure(label: str, model: nn.Module, example) -> None:
    import ghninit

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = ghninit.initialize(model, dataset="cifar10-mini", example_inputs=example)
    warned = [str(w.message) for w in caught if "predicted by the GHN" in str(w.message)]
    accounted = set(report.predicted) | set(report.skipped) | {n for v in report.shared.values() for n in v}
    missing = [n for n, _ in model.named_parameters(remove_duplicate=False) if n not in accounted]
    print(
        f"== {label} ({type(model).__name__}): {100 * report.fraction_predicted:.1f}% predicted "
        f"({report.n_params_predicted:,}/{report.n_params_total:,}), warned: {bool(warned)}, "
        f"{time.perf_counter() - start:.1f}s"
    )
    for kind, why, n in report.skipped_families[:6]:
        print(f"   skipped {kind}: {why}: {n:,}")
    print(f"   names the report does not account for: {len(missing)} {missing[:3]}")
    if warned:
        print(f"   warning: {warned[0]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="labels of the models to measure (default: all)")
    argv = parser.parse_args(argv).models
    torch.manual_seed(0)
    models = _models()
    for label in argv or list(models):
        model, example = models[label]()
        measure(label, model, example)


if __name__ == "__main__":
    main(sys.argv[1:])
