"""``init --format dcp``: write a ``torch.distributed.checkpoint`` folder, sharded across ranks under ``torchrun``.

For models too large to save (or hold) whole. Under ``torchrun --nproc_per_node N python -m
ghninit init MODEL -o FOLDER --format dcp`` every rank builds the model on the meta device,
``fully_shard``s it over all N ranks (gloo on CPU), allocates its shards, gives every tensor its
modules' own initialisation (``reset_parameters``, as a meta-device model gets), initialises it with
:func:`ghninit.initialize` (each rank its own shards, see ``docs/sharded.md``) and saves its
shards with ``torch.distributed.checkpoint.save``; no process ever holds the whole model. In one
process (no ``torchrun``) the model is initialised as ``init`` always does and saved the same way.
A training job loads the folder into its own (sharded or not) state dict with
``torch.distributed.checkpoint.load``. The folder is written under a temporary name beside its
target and renamed by rank 0 once every rank has saved; the report goes to ``FOLDER.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from .models import ModelSpec, build_model


def _log(message: str) -> None:
    print(f"ghninit: {message}", file=sys.stderr, flush=True)


def _sharded_model(spec: ModelSpec, args: argparse.Namespace, ghn) -> tuple[nn.Module, object]:
    """Build ``spec`` on meta, ``fully_shard`` it over every rank, allocate, reset and initialise each rank's shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import ghninit

    from ..write.meta import _initialise_rest

    keep = {"auto": None, "predict": False, "keep": True}[args.classifier]
    torch.manual_seed(args.seed)
    model = build_model(spec, meta=True)
    fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
    model.to_empty(device="cpu")
    _initialise_rest(model, set())  # what the GHN does not predict gets its modules' own initialisation
    report = ghninit.initialize(model, ghn=ghn, keep_classifier=keep, postprocess=args.postprocess)
    return model, report


def run_init_dcp(
    args: argparse.Namespace, spec: ModelSpec, output: Path, report_path: Path, initialize_model: Callable
) -> int:
    """Initialise ``spec`` and save it as a DCP folder at ``output``; returns the exit status.

    ``initialize_model`` is ``init``'s builder for the unsharded case (passed in, so that the two
    command modules do not import each other).
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import ghninit

    start = time.perf_counter()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("gloo")
    try:
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:
            model, report = _sharded_model(spec, args, ghninit.load_ghn(args.ghn))
            built_on = f"meta, fully_shard over {world} ranks"
        else:
            model, report, built_on = initialize_model(spec, args)
        if rank == 0:
            print(report, file=sys.stderr)
        tmp = [tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent) if rank == 0 else None]
        if world > 1:
            dist.broadcast_object_list(tmp, src=0)
        try:
            dcp.save(model.state_dict(), checkpoint_id=tmp[0])
            if world > 1:
                dist.barrier()
            if rank == 0:
                summary = {
                    "file": output.name,
                    "format": "dcp",
                    "model": str(spec),
                    "library": spec.library,
                    "model_kwargs": spec.kwargs,
                    "built_on": built_on,
                    "world_size": world,
                    "seed": args.seed,
                    "report": dataclasses.asdict(report),
                }
                if output.exists():  # --force was given (checked before)
                    shutil.rmtree(output) if output.is_dir() else output.unlink()
                os.replace(tmp[0], output)
                report_path.write_text(json.dumps(summary, indent=2, default=str))
        finally:
            if rank == 0 and os.path.isdir(tmp[0]):
                shutil.rmtree(tmp[0], ignore_errors=True)
        if rank == 0:
            _log(f"wrote {output} (dcp, {world} rank(s)) and {report_path.name} in {time.perf_counter() - start:.1f} s")
        return 0
    finally:
        if owns_group:
            dist.destroy_process_group()
