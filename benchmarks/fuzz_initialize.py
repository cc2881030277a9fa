"""Fuzz ``ghninit.initialize`` with random DeepNets-1M architectures and check its properties.

For each architecture (splits in turn, CIFAR-10 and ImageNet heads) and each GHN:

- every parameter the report lists as predicted changed, every other parameter and every buffer
  other than BatchNorm running statistics is byte-for-byte unchanged;
- a forward pass on a random batch is finite;
- a second ``initialize`` gives identical tensors (determinism);
- an injected failure (a NaN tensor, a wrong shape, or an exception halfway through decoding)
  raises and leaves the whole ``state_dict`` byte-for-byte as it was.

Writes a markdown summary (architectures, checks, failures by kind) and a JSON file with every
failure. tests/test_fuzz.py runs the same checks on a small sample.

    python benchmarks/fuzz_initialize.py --n 2000
    python benchmarks/fuzz_initialize.py --n 60 --ghn cifar10-mini --out runs/fuzz.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ghninit  # noqa: E402
from ghninit import deepnets  # noqa: E402

SPLITS = ("train", "test", "wide", "deep", "dense", "bnfree")
HEADS = {"cifar10": (10, 32), "imagenet": (1000, 224)}  # (classes, image size)
INJECTIONS = ("nan", "shape", "raise")
IMAGENET_RANDOM = (
    Path(__file__).resolve().parents[2] / "shared/fixtures/ghn2_reference/ghn2_imagenet_random.safetensors"
)


class PropertyViolation(AssertionError):
    """``initialize`` ran but broke one of the properties checked here."""


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    """Every state_dict entry as raw bytes (exact, NaN-safe, any dtype)."""
    return {
        k: v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        for k, v in model.state_dict().items()
    }


def _batchnorm_buffers(model: nn.Module) -> set[str]:
    names = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            names.update(f"{path}.{n}" if path else n for n, _ in module.named_buffers(recurse=False))
    return names


def check_initialize(model: nn.Module, ghn: ghninit.GHN2, image_size: int, seed: int = 0) -> ghninit.Report:
    """Initialise ``model`` and check the properties; raises :class:`PropertyViolation`."""
    before = state_bytes(model)
    report = ghninit.initialize(model, ghn=ghn)
    after = state_bytes(model)
    predicted = set(report.predicted)
    if not predicted:
        raise PropertyViolation("nothing was predicted")
    reset = _batchnorm_buffers(model)
    for name in after:
        if name in predicted and after[name] == before[name]:
            raise PropertyViolation(f"'{name}' is reported as predicted but did not change")
        if name not in predicted and name not in reset and after[name] != before[name]:
            raise PropertyViolation(f"'{name}' is not reported as predicted but changed")
    dtype = next(model.parameters()).dtype
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)).to(dtype)
    with torch.no_grad():
        out = model(x)
    if not torch.isfinite(out).all():
        raise PropertyViolation("the forward pass after initialize is not finite")
    ghninit.initialize(model, ghn=ghn)
    again = state_bytes(model)
    changed = [n for n in after if n not in reset and again[n] != after[n]]
    if changed:
        raise PropertyViolation(f"a second initialize gave different tensors (first: '{changed[0]}')")
    return report


@contextlib.contextmanager
def injected(ghn: ghninit.GHN2, kind: str, seed: int = 0):
    """Make ``ghn`` fail while predicting: ``nan`` (one tensor NaN), ``shape`` (one tensor too
    large) or ``raise`` (an exception in the middle of decoding)."""
    rng = random.Random(seed)
    if kind in ("nan", "shape"):
        original = ghn.predict_blocks

        def predict_blocks(*args, **kwargs):
            blocks = original(*args, **kwargs)
            name = rng.choice(sorted(blocks))
            block, shape = blocks[name]
            if kind == "nan":
                block = block.clone().view(-1)
                block[rng.randrange(block.numel())] = float("nan")
                block = block.view(blocks[name][0].shape)
            else:
                block = torch.zeros(*[s + 1 for s in shape])
            blocks[name] = block, shape
            return blocks

        ghn.predict_blocks = predict_blocks
        try:
            yield
        finally:
            del ghn.predict_blocks
    elif kind == "raise":
        original_predict, original_decode = ghn.predict_blocks, ghn._decode
        calls: list[int] = []

        def predict_blocks(graph, predict_classifier=True):
            calls[:] = [len(ghn.decoder_groups(graph, predict_classifier)) // 2 + 1]  # the group to fail at
            return original_predict(graph, predict_classifier)

        def decode(*args, **kwargs):
            calls.append(1)
            if len(calls) - 1 == calls[0]:
                raise RuntimeError("injected failure halfway through decoding")
            return original_decode(*args, **kwargs)

        ghn.predict_blocks, ghn._decode = predict_blocks, decode
        try:
            yield
        finally:
            del ghn.predict_blocks, ghn._decode
    else:
        raise ValueError(f"unknown injection {kind!r}; expected one of {INJECTIONS}")


def check_all_or_nothing(model: nn.Module, ghn: ghninit.GHN2, kind: str, seed: int = 0) -> None:
    """An injected failure must raise and leave the state_dict byte-for-byte unchanged."""
    before = state_bytes(model)
    try:
        with injected(ghn, kind, seed):
            ghninit.initialize(model, ghn=ghn)
    except (ghninit.PredictionError, RuntimeError):
        pass
    else:
        raise PropertyViolation(f"injected failure '{kind}' did not raise")
    if state_bytes(model) != before:
        raise PropertyViolation(f"injected failure '{kind}' changed the model")


def run_case(split: str, index: int, head: str, ghn: ghninit.GHN2, injection: str | None) -> dict:
    """Build one architecture, run every check; returns a result row (``error`` None when all pass)."""
    classes, size = HEADS[head]
    row = {"split": split, "index": index, "head": head, "ghn": ghn.source, "injection": injection, "error": None}
    start = time.perf_counter()
    try:
        torch.manual_seed(index)
        model = deepnets.generate(split, index).build(num_classes=classes, image_size=size)
        report = check_initialize(model, ghn, size, seed=index)
        row["fraction_predicted"] = report.fraction_predicted
        if injection:
            check_all_or_nothing(model, ghn, injection, seed=index)
    except Exception as err:  # every failure is a result of the fuzz run, grouped by kind
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def load_ghns(names: list[str]) -> list[ghninit.GHN2]:
    ghns = []
    for name in names:
        if name == "imagenet-random":
            if not IMAGENET_RANDOM.exists():
                print(f"skipping imagenet-random: {IMAGENET_RANDOM} not found", file=sys.stderr)
                continue
            ghn = ghninit.load_ghn(IMAGENET_RANDOM)
            ghn.source = "imagenet-random"
        else:
            ghn = ghninit.load_ghn(name)
        ghns.append(ghn)
    return ghns


def cases(n: int, ghns: list[ghninit.GHN2], seed: int):
    """``n`` cases: every (split, head, GHN) in turn; architecture index and injection drawn from ``seed``."""
    rng = random.Random(seed)
    for i in range(n):
        split = SPLITS[i % len(SPLITS)]
        head = list(HEADS)[(i // len(SPLITS)) % len(HEADS)]
        ghn = ghns[(i // (len(SPLITS) * len(HEADS))) % len(ghns)]
        yield split, rng.randrange(1_000_000), head, ghn, rng.choice(INJECTIONS)


def summary(rows: list[dict], command: str, seconds: float) -> str:
    ok = [r for r in rows if r["error"] is None]
    lines = [
        "# Fuzzing `initialize`",
        "",
        f"`{command}`: {len(rows)} architectures, {len(ok)} passed every check, "
        f"{len(rows) - len(ok)} failed; {seconds / 60:.1f} minutes (torch {torch.__version__}).",
        "",
        "| split | head | GHN | cases | passed | mean % params predicted |",
        "|---|---|---|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["head"], r["ghn"]), []).append(r)
    for (split, head, ghn), rs in sorted(groups.items()):
        good = [r for r in rs if r["error"] is None]
        mean = sum(r["fraction_predicted"] for r in good) / len(good) * 100 if good else float("nan")
        lines.append(f"| {split} | {head} | {ghn} | {len(rs)} | {len(good)} | {mean:.1f} |")
    kinds = Counter(r["error"].split(":")[0] for r in rows if r["error"])
    lines += ["", "Failures by kind:" if kinds else "No failures.", ""]
    lines += [f"- {kind}: {count}" for kind, count in kinds.most_common()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="number of architectures")
    parser.add_argument(
        "--ghn",
        nargs="+",
        default=["cifar10-mini", "imagenet-random"],
        help="GHNs, used in turn: names or paths; imagenet-random is ../shared's random-weight ImageNet GHN-2",
    )
    parser.add_argument("--seed", type=int, default=0, help="draws the architecture indices")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz_initialize.md"), help="markdown summary")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ghns = load_ghns(args.ghn)
    start = time.perf_counter()
    rows = [run_case(*case) for case in tqdm(list(cases(args.n, ghns, args.seed)), desc="fuzz")]
    command = "python benchmarks/fuzz_initialize.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = summary(rows, command.strip(), time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps([r for r in rows if r["error"]], indent=1))
    print(text)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
