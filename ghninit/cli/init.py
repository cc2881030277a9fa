"""``init``: build a model by name, initialise it with a GHN, and write its state dict for a training script.

``python -m ghninit init resnet50 -o r50.safetensors --ghn cifar10-mini`` builds the model the way
timm's ``train.py`` builds it (``timm.create_model`` with the same ``--num-classes``,
``--in-chans``, ``--model-kwargs``; ``--img-size``/``--input-size`` reach the constructor where it
takes an image size), on the meta device where it can, initialises it
with :func:`ghninit.initialize` and writes the whole state dict (``.safetensors`` by default,
``.pth``/``.pt`` with ``torch.save``) plus the report as ``FILE.json``. The file is what
``train.py --initial-checkpoint FILE`` (``timm.models.load_checkpoint``) and
``model.load_state_dict`` take. Both files are written to temporary names in the target folder and
renamed only once complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .models import ModelSpec, add_model_arguments, build_model, check_destination, spec_from_args

if TYPE_CHECKING:  # torch is imported when the command runs: `init --help` does without it
    import torch
    import torch.nn as nn

FORMATS = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch"}


def configure_init(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build MODEL, predict its parameters with a GHN and write the state dict to FILE (.safetensors, .pth or .pt) "
        "and the report to FILE.json. timm: train.py --model MODEL --initial-checkpoint FILE. See docs/training-scripts.md."
    )
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the state dict")
    parser.add_argument(
        "--ghn", default="cifar10-mini", help="GHN name (see `python -m ghninit list`) or path (default: cifar10-mini)"
    )
    parser.add_argument(
        "--postprocess",
        choices=("orth", "orth-he"),
        help="orthogonalise the predicted conv/linear weights (recommended before fine-tuning)",
    )
    parser.add_argument(
        "--classifier",
        choices=("auto", "predict", "keep"),
        default="auto",
        help="auto (default): predict the classifier when its size matches the GHN's classes; keep: the model's own init",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the parameters the GHN does not predict (default 0)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite FILE and FILE.json if they exist")
    parser.add_argument("--no-meta", action="store_true", help="build the model on the CPU (not on the meta device)")
    parser.add_argument(
        "--format",
        choices=("dcp",),
        help="dcp: write FILE as a torch.distributed.checkpoint folder; under torchrun each rank initialises and saves "
        "only its shards (docs/sharded.md)",
    )


def check_output(path: Path, force: bool) -> tuple[Path, str]:
    """``(report path, format)`` for writing to ``path``; raises ``ValueError``/``FileExistsError``/``FileNotFoundError``."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown extension '{path.suffix}'; use .safetensors (default), .pth or .pt")
    return check_destination(path, force), fmt


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors, each with its own storage (safetensors refuses shared ones)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        out[name] = t.clone() if key in seen else t
        seen.add(key)
    return out


def write_outputs(output: Path, report_path: Path, write_state, report: dict) -> None:
    """Write the state dict (``write_state(tmp)``) and the report (with the file's sha256) to temporary files beside
    their targets, then rename both; on any failure remove the temporaries, so no target is half-written."""
    from ..zoo.cache import file_sha256

    temps: list[Path] = []
    try:
        for _ in range(2):
            fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
            temps.append(Path(tmp))
        write_state(temps[0])
        report = {**report, "sha256": file_sha256(temps[0])}
        temps[1].write_text(json.dumps(report, indent=2, default=str))
        os.replace(temps[0], output)
        os.replace(temps[1], report_path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _log(message: str) -> None:
    print(f"ghninit: {message}", file=sys.stderr, flush=True)


def example_image(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    """A ``(1, C, H, W)`` image on ``model``'s device and in its dtype (no memory on the meta device)."""
    import torch

    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.get_default_dtype())
    if device.type == "meta":
        return torch.empty((1, *input_size), device=device, dtype=dtype)
    return torch.rand((1, *input_size), dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device)


def _initialize(model: nn.Module, spec: ModelSpec, seed: int, **options):
    """:func:`ghninit.initialize`; when tracing fails and an input size was given that the model does not record
    (timm models record it in ``pretrained_cfg``), once more on an example image of that size."""
    import torch

    import ghninit

    from ..errors import TraceError

    try:
        return ghninit.initialize(model, **options)
    except TraceError as err:
        if spec.input_size is None or isinstance(getattr(model, "pretrained_cfg", None), dict):
            raise
        _log(f"{err}".splitlines()[0] + f"; tracing on an example input of {'x'.join(map(str, spec.input_size))}")
        torch.manual_seed(seed)  # nothing was written, but keep the same random stream for what is not predicted
        return ghninit.initialize(model, example_inputs=example_image(model, spec.input_size), **options)


def initialize_model(spec: ModelSpec, args: argparse.Namespace):
    """Build and initialise ``spec``; returns ``(model, report, built_on)``; meta first, the CPU when meta cannot work."""
    import torch

    import ghninit

    keep = {"auto": None, "predict": False, "keep": True}[args.classifier]
    ghn = ghninit.load_ghn(args.ghn)
    options = {"ghn": ghn, "keep_classifier": keep, "postprocess": args.postprocess}
    torch.manual_seed(args.seed)
    if not args.no_meta:
        model = build_model(spec, meta=True)
        try:
            return model, _initialize(model, spec, args.seed, device="cpu", **options), "meta"
        except ValueError as err:  # buffers only the constructor computes: detected before any write
            _log(f"cannot materialise {spec} from the meta device ({str(err).splitlines()[0]}); building it on the CPU")
            torch.manual_seed(args.seed)
    model = build_model(spec)
    return model, _initialize(model, spec, args.seed, **options), "cpu"


def run_init(args: argparse.Namespace) -> int:
    import logging

    import torch

    logging.getLogger("ghninit").setLevel(logging.ERROR)  # the report printed below carries the advice line

    from ..errors import GHNLoadError, PredictionError, TraceError

    start = time.perf_counter()
    output = Path(args.output)
    try:
        if getattr(args, "format", None) == "dcp":
            report_path, fmt = check_destination(output, args.force), "dcp"
        else:
            report_path, fmt = check_output(output, args.force)
        spec = spec_from_args(args)
        _log(f"building {spec} ({spec.library}{', ' + str(spec.kwargs) if spec.kwargs else ''})")
        if spec.input_size is not None:
            _log(spec.describe_input())
        if fmt == "dcp":
            from .init_dcp import run_init_dcp

            return run_init_dcp(args, spec, output, report_path, initialize_model)
        model, report, built_on = initialize_model(spec, args)
    except (ValueError, LookupError, FileExistsError, FileNotFoundError, TypeError, GHNLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TraceError, PredictionError) as err:
        hint = ""
        if isinstance(err, TraceError) and spec.input_size is None and "example input" in str(err):
            hint = (
                "\nIf the model takes another input size than the example's, pass --img-size N or --input-size C H W."
            )
        print(f"error: could not initialise {args.model}: {err}{hint}", file=sys.stderr)
        return 1
    print(report, file=sys.stderr)
    tensors = state_dict_for_saving(model)

    def write_state(tmp: Path) -> None:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(
                tensors, str(tmp), metadata={"format": "pt", "ghninit_model": str(spec), "ghninit_ghn": report.ghn}
            )
        else:
            torch.save(tensors, tmp)

    summary = {
        "file": output.name,
        "format": fmt,
        "model": str(spec),
        "library": spec.library,
        "model_kwargs": spec.kwargs,
        "input_size": list(spec.input_size) if spec.input_size else None,
        "input_size_keyword": spec.size_keyword,
        "built_on": built_on,
        "seed": args.seed,
        "report": dataclasses.asdict(report),
    }
    write_outputs(output, report_path, write_state, summary)
    _log(
        f"wrote {output} ({fmt}, {len(tensors)} tensors, {output.stat().st_size / 1e6:.1f} MB) and {report_path.name} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
