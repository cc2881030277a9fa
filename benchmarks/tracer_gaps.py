"""Models the tracers used to stop at: tiny Hugging Face text models, MONAI UNETR, effdet's DetBenchPredict.

Issue 28 rows 2, 4 and 5: a module made inside ``forward`` (DistilBERT's ``nn.ReLU()(x)``; the
rotary-embedding function module that transformers 5 holds outside the model when ``kernels`` is
installed: Llama, Mistral, Qwen2, Gemma, Phi), ``x.ndim`` used as a dict key (einops ``Rearrange`` in
MONAI's UNETR) and a ``@torch.jit.script`` function called on traced values (effdet's
``_post_process``). Each model is built from a small config with random weights and given to
``initialize(model, ghn="cifar10-mini", example_inputs=...)``; the table gives the share of
parameters predicted and how the graph was traced, or the error. MONAI, einops and effdet rows are
measured only where those packages are installed (``pip install --no-deps monai effdet`` plus
``einops omegaconf``). Prints a markdown table.

    PYTHONPATH=$PWD python benchmarks/tracer_gaps.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402

IDS = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))


def _text_models() -> dict:
    import transformers as T

    small = dict(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=64,
    )  # fmt: skip
    distil = dict(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    return {
        "DistilBertModel": lambda: T.DistilBertModel(T.DistilBertConfig(**distil)),
        "DistilBertForSequenceClassification": lambda: T.DistilBertForSequenceClassification(
            T.DistilBertConfig(**distil)
        ),
        "LlamaModel": lambda: T.LlamaModel(T.LlamaConfig(**small, num_key_value_heads=1)),
        "LlamaForCausalLM": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small, num_key_value_heads=1)),
        "MistralModel": lambda: T.MistralModel(T.MistralConfig(**small, num_key_value_heads=1)),
        "Qwen2Model": lambda: T.Qwen2Model(T.Qwen2Config(**small, num_key_value_heads=1)),
        "GemmaModel": lambda: T.GemmaModel(T.GemmaConfig(**small, num_key_value_heads=1, head_dim=16)),
        "PhiModel": lambda: T.PhiModel(T.PhiConfig(**small)),
        "GPTNeoXModel": lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**small)),
        "BertForSequenceClassification": lambda: T.BertForSequenceClassification(T.BertConfig(**small)),
        "T5Model": lambda: T.T5Model(
            T.T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
        ),
    }


def _inputs(name: str):
    if name == "T5Model":
        return {"input_ids": IDS, "decoder_input_ids": IDS}
    return {"input_ids": IDS}


def _other_models() -> dict:
    out = {}
    try:
        from monai.networks.nets import UNETR

        out["UNETR (MONAI)"] = lambda: (
            UNETR(1, 2, (32, 32, 32), feature_size=8, hidden_size=96, mlp_dim=192, num_heads=4),
            torch.randn(1, 1, 32, 32, 32),
        )
    except ImportError:
        pass
    try:
        from effdet import create_model

        out["DetBenchPredict (effdet d0)"] = lambda: (
            create_model(
                "efficientdet_d0", bench_task="predict", pretrained=False, pretrained_backbone=False, num_classes=5,
                image_size=(256, 256),
            ).eval(),
            torch.randn(1, 3, 256, 256),
        )  # fmt: skip
    except ImportError:
        pass
    return out


def _row(name: str, build) -> str:
    torch.manual_seed(0)
    built = build()
    model, example = built if isinstance(built, tuple) else (built, _inputs(name))
    start = time.perf_counter()
    try:
        report = ghninit.initialize(model, ghn="cifar10-mini", example_inputs=example)
    except Exception as err:  # the table records the failure
        first = str(err).strip().splitlines()
        reason = next((line.strip() for line in first if "mode:" in line), first[0] if first else "")
        total = sum(p.numel() for p in model.parameters())
        return f"| {name} | {total:,} | failed | {type(err).__name__}: {reason[:120]} |"
    seconds = time.perf_counter() - start
    share = 100 * report.n_params_predicted / report.n_params_total
    return f"| {name} | {report.n_params_total:,} | {share:.1f}% | {report.tracing}, {seconds:.2f} s |"


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("ghninit").setLevel(logging.ERROR)
    print("| model | parameters | predicted | tracing |")
    print("|---|---:|---:|---|")
    for name, build in {**_text_models(), **_other_models()}.items():
        print(_row(name, build), flush=True)


if __name__ == "__main__":
    main()
