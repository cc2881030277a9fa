"""Peak memory per rank and time of ``initialize`` on a >1B-parameter model sharded with FSDP2 over CPU ranks.

``sharded``: every rank builds the model on the meta device, ``fully_shard``s each block and the
root over a 1-D mesh of ``--world`` gloo ranks, allocates its shards with ``to_empty`` and fills
them (so their pages count in the resident size before ``initialize``), then calls
``ghninit.initialize(model, dataset=...)``, which writes only that rank's shards; with ``--scatter``
rank 0 alone computes each full tensor and scatters the chunks (``ghninit.write.sharded.SCATTER_FROM``).
``unsharded``: one process builds the same model on meta and calls ``initialize(..., device="cpu")``
(the whole model allocated once and written). Each run is a fresh process (or set of processes),
so ``ru_maxrss`` is that run's own peak; ``rss_before`` is the resident size just before
``initialize`` (imports, GHN, the rank's filled shards). Writes one JSON line per rank.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sharded_memory.py --mode sharded --world 2
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/sharded_memory.py --mode unsharded
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "vit_giant_patch14_224"


def _rss_mb() -> float:
    """Current resident set size (VmRSS) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(name: str, img_size: int) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(name, img_size=img_size, num_classes=10)


def _sharded_rank(rank: int, world: int, init: str, args: argparse.Namespace) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import ghninit

    ghninit.load_ghn(args.dataset)  # loaded (and cached) before the baseline, as the unsharded run does
    if args.scatter:
        import ghninit.write.sharded

        ghninit.write.sharded.SCATTER_FROM = 0
    mesh = init_device_mesh("cpu", (world,))
    model = _build(args.model, args.img_size)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().zero_()  # touch the pages: the shards are resident before initialize, as in training
    local_bytes = sum(p.to_local().numel() * p.to_local().element_size() for p in model.parameters())
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    dist.barrier()
    before = _rss_mb()
    start = time.perf_counter()
    report = ghninit.initialize(model, dataset=args.dataset, postprocess=args.postprocess)
    seconds = time.perf_counter() - start
    dist.barrier()
    row = {
        "mode": "sharded, rank 0 computes and scatters" if args.scatter else "sharded, every rank computes",
        "rank": rank,
        "world": world,
        **_measured(args, report, largest, before, seconds),
        "local_shard_mb": local_bytes / 2**20,
    }
    print(json.dumps(row), flush=True)
    dist.destroy_process_group()


def _measured(args: argparse.Namespace, report, largest: int, before: float, seconds: float) -> dict:
    """The fields a sharded and an unsharded run both report."""
    return {
        "model": args.model,
        "params": report.n_params_total,
        "predicted": report.n_params_predicted,
        "model_mb": report.n_params_total * 4 / 2**20,
        "largest_tensor_mb": largest / 2**20,
        "rss_before_mb": before,
        "peak_rss_mb": _peak_mb(),
        "initialize_s": seconds,
        "stages_s": report.seconds,
        "postprocess": args.postprocess,
    }


def _unsharded(args: argparse.Namespace) -> None:
    import ghninit

    torch.set_num_threads(1)
    ghninit.load_ghn(args.dataset)
    model = _build(args.model, args.img_size)
    before = _rss_mb()
    start = time.perf_counter()
    report = ghninit.initialize(model, dataset=args.dataset, device="cpu", postprocess=args.postprocess)
    seconds = time.perf_counter() - start
    largest = max(p.numel() * p.element_size() for p in model.parameters())
    row = {"mode": "unsharded", **_measured(args, report, largest, before, seconds)}
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["sharded", "unsharded"], required=True)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--dataset", default="cifar10-mini")
    parser.add_argument("--postprocess", default=None)
    parser.add_argument(
        "--scatter", action="store_true", help="rank 0 computes every full tensor and scatters the chunks"
    )
    args = parser.parse_args()
    if args.mode == "unsharded":
        _unsharded(args)
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_sharded_rank, args=(args.world, os.path.join(tmp, "init"), args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
