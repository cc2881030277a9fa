"""Train a GHN on DeepNets-1M (Eq. 2 of the GHN-2 paper): meta-batches of architectures per image batch.

Examples:

    # GHN-2 on CIFAR-10 with the paper's hyper-parameters (local ImageFolder copy)
    python benchmarks/train_ghn.py --data-dir ../shared/data/cifar10-jpeg --save-dir runs/ghn2

    # stop after 30 minutes; the same command later resumes from runs/ghn2/checkpoint.pt
    python benchmarks/train_ghn.py --data-dir ../shared/data/cifar10-jpeg --save-dir runs/ghn2 --max-minutes 30

    # ablations: GHN-1, the MLP baseline, or single flags
    python benchmarks/train_ghn.py --preset ghn1 ...        # no virtual edges/normalisation/LayerNorm, b_m = 1
    python benchmarks/train_ghn.py --preset mlp ...         # MLP instead of the gated GNN
    python benchmarks/train_ghn.py --no-ve --meta-batch 1 ...

    # data-parallel on 2 CPU processes (gloo) or GPUs (nccl); the meta-batch is split over processes
    python benchmarks/train_ghn.py --procs 2 --data-dir ... --save-dir runs/ghn2-ddp
    torchrun --nproc_per_node 2 benchmarks/train_ghn.py --data-dir ... --save-dir runs/ghn2-ddp   # the same

Outputs in --save-dir: checkpoint.pt (model, optimiser, scheduler, RNG, step; rewritten every
--checkpoint-minutes and at exit), log.csv (one row per step: loss, accuracy of the predicted
networks on the batch, timings, images/s, CPU time), and final/ in the Hugging Face Hub layout
(config.json + model.safetensors, loadable with ghninit.load_ghn("runs/ghn2/final")) plus
final/ghn.safetensors (a single file with the config in its metadata).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import IO

import torch
import torch.distributed as dist
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ghninit.ghn.presets import PRESETS  # noqa: E402
from ghninit.training.data import TrainBatches, imagenet_loaders, load_cifar10  # noqa: E402
from ghninit.training.trainer import PHASES, ArchitecturePrefetcher, TrainConfig, Trainer  # noqa: E402

CSV_FIELDS = [
    "step",
    "epoch",
    "lr",
    "loss",
    "top1",
    "skipped",
    "nodes",
    "archs",
    *[f"{phase}_s" for phase in PHASES],
    "step_s",
    *[f"{phase}_cpu_s" for phase in PHASES],
    "step_cpu_s",
    "images_per_s",
    "wall_s",
    "cpu_minutes",
]


def open_log(path: Path, resume_step: int) -> tuple[IO[str], csv.DictWriter]:
    """Open the CSV log to go on from ``resume_step``, rewriting what it already holds.

    Rows of steps at or after ``resume_step`` are dropped (a resumed run redoes them from its
    checkpoint), a step logged twice keeps its last row, and rows are written under the current
    :data:`CSV_FIELDS` even if an older version of this script wrote the file with fewer columns.
    """
    kept: dict[int, dict[str, str]] = {}
    if resume_step > 0 and path.exists():
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            for values in reader:
                fields = header if len(values) == len(header) else CSV_FIELDS
                if len(values) != len(fields):
                    continue  # a row cut short when a run was killed
                row = dict(zip(fields, values))
                if int(row["step"]) < resume_step:
                    kept[int(row["step"])] = row
    log_file = path.open("w", newline="")
    writer = csv.DictWriter(log_file, CSV_FIELDS, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(kept[step] for step in sorted(kept))
    log_file.flush()
    return log_file, writer


def budget_spent(args: argparse.Namespace, wall_seconds: float, cpu_minutes: float) -> str | None:
    """Why this run must stop now (``--max-minutes`` or ``--max-cpu-minutes`` reached), or None."""
    if args.max_minutes is not None and wall_seconds > 60 * args.max_minutes:
        return f"--max-minutes {args.max_minutes} reached"
    if args.max_cpu_minutes is not None and cpu_minutes >= args.max_cpu_minutes:
        return f"--max-cpu-minutes {args.max_cpu_minutes} reached"
    return None


def agree_to_stop(reason: str | None, device: torch.device) -> str | None:
    """Stop every process when any must: clocks differ between ranks, and a rank stopping alone would
    leave the others waiting in their next gradient all-reduce."""
    flag = torch.tensor([0 if reason is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return reason or ("a budget was reached on another process" if flag.item() else None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset", default="cifar10", choices=["cifar10", "imagenet"], help="image data set (default: cifar10)"
    )
    d.add_argument(
        "--data-dir",
        default="./data",
        help="CIFAR-10: an ImageFolder tree (train/, test/) or torchvision's download folder; "
        "ImageNet: an ImageFolder tree (train/, val/). Default: ./data",
    )
    d.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision if absent")
    d.add_argument("--workers", type=int, default=4, help="ImageNet data-loading workers (default: 4)")

    g = p.add_argument_group("GHN (the published GHN-2 by default)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="ghn2", help="ghn2 (default), ghn1 or mlp")
    g.add_argument("--hypernet", choices=["gatedgnn", "mlp"], help="message passing: gated GNN or none (MLP baseline)")
    g.add_argument("--no-ve", action="store_true", help="no virtual edges (ablation)")
    g.add_argument("--no-norm", action="store_true", help="no normalisation of predicted parameters (ablation)")
    g.add_argument("--no-ln", action="store_true", help="no LayerNorm on node states (ablation)")
    g.add_argument("--hid", type=int, default=32, help="node state size (default: 32)")

    t = p.add_argument_group("optimisation (paper defaults)")
    t.add_argument("-m", "--meta-batch", type=int, help="architectures per image batch, b_m (default: 8; ghn1: 1)")
    t.add_argument("-b", "--batch-size", type=int, help="images per batch (default: 64 CIFAR-10, 256 ImageNet)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    t.add_argument("--wd", type=float, default=1e-5, help="weight decay (default: 1e-5)")
    t.add_argument("--epochs", type=float, default=300, help="epochs of the schedule (default: 300)")
    t.add_argument(
        "--lr-steps",
        type=str,
        default=None,
        help="epochs at which the lr is multiplied by --gamma, comma-separated "
        "(default: 2/3 and 5/6 of --epochs, i.e. 200,250 for 300 epochs)",
    )
    t.add_argument("--gamma", type=float, default=0.1, help="step decay factor (default: 0.1)")
    t.add_argument(
        "--schedule",
        choices=["step", "cosine"],
        default="step",
        help="step: multiply by --gamma at --lr-steps (paper); cosine: decay to zero over --epochs (default: step)",
    )
    t.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps (default: 0)")
    t.add_argument("--grad-clip", type=float, default=5.0, help="gradient norm clipping (default: 5)")
    t.add_argument(
        "--max-nodes",
        type=int,
        default=2200,
        help="redraw a meta-batch whose graphs have more nodes in total (default: 2200, as the reference; 0: off)",
    )
    t.add_argument("--num-nets", type=int, default=10**6, help="TRAIN architectures to sample from (default: 1M)")
    t.add_argument("--seed", type=int, default=0, help="seed of everything random (default: 0)")

    r = p.add_argument_group("run")
    r.add_argument("--save-dir", default="runs/ghn", help="checkpoint, CSV log and final model (default: runs/ghn)")
    r.add_argument("--no-resume", action="store_true", help="start over even if --save-dir has a checkpoint")
    r.add_argument("--init", help="start from these GHN weights (a folder, .safetensors or reference .pt)")
    r.add_argument("--max-steps", type=int, help="stop after this many steps in total")
    r.add_argument("--max-minutes", type=float, help="stop this invocation after this wall time (checkpoint kept)")
    r.add_argument(
        "--max-cpu-minutes",
        type=float,
        help="stop once the run (all invocations together, this process) has used this much CPU time",
    )
    r.add_argument("--checkpoint-minutes", type=float, default=10.0, help="checkpoint interval (default: 10)")
    r.add_argument(
        "--procs",
        type=int,
        help="data-parallel processes started by this call with torchrun's launcher (gloo on CPU, nccl on "
        "GPUs); the meta-batch is split over them. Ignored under torchrun (default: one per GPU, else one per "
        "CPU core, as many as divide the meta-batch: measured fastest on a 2-core machine, benchmarks/README.md)",
    )
    r.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per process (default: the CPU cores divided by --procs)",
    )
    r.add_argument(
        "--prefetch-workers",
        type=int,
        help="processes per training process that build the next steps' architectures and graphs ahead of the "
        "step loop; 0 builds them inline (default: 1 on a GPU or when a CPU core is left over, else 0: on CPU "
        "they compete with the training processes for the same cores)",
    )
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--no-channels-last", action="store_true", help="keep NCHW activations in the target networks")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--per-graph-predict",
        action="store_true",
        help="predict with GHN2.forward one graph at a time (full 64x64 decoding) instead of the batched, "
        "channel-restricted path; same results, slower (for speed comparisons)",
    )
    r.add_argument(
        "--speed-table",
        nargs="+",
        metavar="LOG_CSV",
        help="print the per-phase time table (markdown) of these log.csv files and exit",
    )
    return p.parse_args(argv)


def speed_table(paths: list[str], skip: int = 1) -> str:
    """Markdown table of mean seconds per step and phase (wall and CPU) over the logged steps.

    The first ``skip`` steps of each log (warm-up) are left out. ``pairs/s`` counts
    network-image pairs per wall second between the first and last counted steps (waiting for
    prefetched architectures included); ``GHN side`` is the share of a step spent outside the
    target networks' forward and backward.
    """
    lines = [
        "| run | steps | graph building | GHN forward | target fwd+bwd | GHN backward | optimizer | **total s/step** "
        "| GHN side | **pairs/s (wall)** |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))[skip:]
        if not rows:
            continue
        config_file = Path(path).with_name("train_config.json")
        pairs = 64 * 8
        if config_file.exists():
            cfg = json.loads(config_file.read_text())
            pairs = cfg["batch_size"] * cfg["meta_batch"]
        walls = [float(r["wall_s"]) for r in rows]
        gaps = [b - a for a, b in zip(walls, walls[1:]) if b >= a]  # a resumed run restarts its clock
        rate = f"{pairs * len(gaps) / sum(gaps):.0f}" if sum(gaps) > 0 else "-"
        for kind, suffix in (("CPU", "_cpu_s"), ("wall", "_s")):
            mean = {k: sum(float(r[f"{k}{suffix}"]) for r in rows) / len(rows) for k in [*PHASES, "step"]}
            side = 1 - mean["nets_forward_backward"] / mean["step"] if mean["step"] else float("nan")
            cells = " | ".join(f"{mean[k]:.2f}" for k in PHASES)
            rate_cell = rate if kind == "wall" else ""
            lines.append(
                f"| {path} ({kind}) | {len(rows)} | {cells} | **{mean['step']:.2f}** | {100 * side:.0f}% | {rate_cell} |"
            )
    return "\n".join(lines)


def describe_schedule(config: TrainConfig) -> str:
    warmup = f" after {config.warmup_steps} warm-up steps" if config.warmup_steps else ""
    if config.schedule == "cosine":
        return f"cosine decay over {config.epochs} epochs{warmup}"
    return f"lr x{config.gamma} at epochs {config.lr_steps}{warmup}"


def build_config(args: argparse.Namespace) -> TrainConfig:
    preset = dict(PRESETS[args.preset])
    overrides = {
        "hid": args.hid,
        "lr": args.lr,
        "weight_decay": args.wd,
        "epochs": args.epochs,
        "gamma": args.gamma,
        "schedule": args.schedule,
        "warmup_steps": args.warmup_steps,
        "grad_clip": args.grad_clip,
        "max_nodes": args.max_nodes,
        "num_nets": args.num_nets,
        "seed": args.seed,
        "channels_last": not args.no_channels_last,
        "fast_predict": not args.per_graph_predict,
    }
    if args.hypernet:
        overrides["hypernet"] = args.hypernet
    if args.no_ve:
        overrides["ve"] = False
    if args.no_norm:
        overrides["weight_norm"] = False
    if args.no_ln:
        overrides["layernorm"] = False
    if args.meta_batch:
        overrides["meta_batch"] = args.meta_batch
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    steps = args.lr_steps
    overrides["lr_steps"] = (
        tuple(float(s) for s in steps.split(",") if s) if steps else (args.epochs * 2 / 3, args.epochs * 5 / 6)
    )
    return TrainConfig.for_dataset(args.dataset, **{**preset, **overrides})


class ImageNetBatches:
    """Batch ``step`` of an ImageNet loader (order reseeded per epoch; resuming skips to the position)."""

    def __init__(self, loader, seed: int):
        self.loader, self.seed = loader, seed
        self.steps_per_epoch = len(loader)
        self._it, self._next = None, -1

    def batch(self, step: int):
        if self._it is None or step != self._next:
            epoch, pos = divmod(step, self.steps_per_epoch)
            torch.manual_seed(self.seed + epoch)
            self._it = iter(self.loader)
            for _ in range(pos):
                next(self._it)
        self._next = step + 1
        try:
            return next(self._it)
        except StopIteration:
            self._it = None
            return self.batch(step)


def save_final(trainer: Trainer, folder: Path) -> None:
    """Hub layout (config.json + model.safetensors) and a single self-describing safetensors file."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    ghn = trainer.ghn
    ghn.save_pretrained(str(folder))
    state = {k: v.detach().cpu().contiguous() for k, v in ghn.state_dict().items()}
    meta = {
        "config": json.dumps(ghn.config),
        "step": str(trainer.step),
        "train_config": json.dumps(trainer.config.to_dict()),
    }
    save_file(state, str(folder / "ghn.safetensors"), metadata=meta)


def default_procs(slots: int, meta_batch: int) -> int:
    """Processes for ``slots`` GPUs or CPU cores: the most, up to ``slots``, that divide the meta-batch."""
    return max(p for p in range(1, max(1, slots) + 1) if meta_batch % p == 0)


def launch_processes(procs: int, argv: list[str]) -> int:
    """Run this script in ``procs`` data-parallel processes with torchrun's launcher (one machine)."""
    from torch.distributed.run import main as torchrun

    torchrun(["--standalone", "--nproc_per_node", str(procs), str(Path(__file__).resolve()), *argv])
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.speed_table:
        print(speed_table(args.speed_table))
        return 0
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = build_config(args)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if args.procs is None:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        args.procs = default_procs(gpus or cores, config.meta_batch)
    if args.procs > 1 and not distributed:
        return launch_processes(args.procs, argv if argv is not None else sys.argv[1:])
    procs = int(os.environ.get("WORLD_SIZE", "1")) if distributed else args.procs
    threads = args.threads or max(1, cores // procs)
    torch.set_num_threads(threads)
    if args.prefetch_workers is None:
        args.prefetch_workers = 1 if device.type == "cuda" or cores > procs * threads else 0
    if distributed:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    save_dir = Path(args.save_dir)

    if config.dataset == "cifar10":
        batches = TrainBatches(
            load_cifar10(args.data_dir, True, download=args.download), config.batch_size, config.seed
        )
    else:
        train_loader, _ = imagenet_loaders(args.data_dir, config.batch_size, args.workers, config.image_size)
        batches = ImageNetBatches(train_loader, config.seed)

    ghn = None
    if args.init:
        from ghninit import load_ghn

        ghn = load_ghn(args.init)
    trainer = Trainer(config, ghn=ghn, device=device, distributed=distributed, steps_per_epoch=batches.steps_per_epoch)
    ckpt = save_dir / "checkpoint.pt"
    cpu_before = 0.0
    if ckpt.exists() and not args.no_resume:
        trainer.load(ckpt)
        cpu_before = torch.load(ckpt, map_location="cpu", weights_only=False).get("cpu_minutes", 0.0)
        if rank == 0:
            print(f"resumed from {ckpt} at step {trainer.step} ({cpu_before:.1f} CPU-minutes so far)", flush=True)

    def cpu_minutes() -> float:
        # Prefetch workers count once they have exited (RUSAGE_CHILDREN): at the final checkpoint.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cpu_before + (time.process_time() + children.ru_utime + children.ru_stime) / 60

    def checkpoint() -> None:
        if rank == 0:
            state = trainer.state_dict()
            state["cpu_minutes"] = cpu_minutes()
            save_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_name(ckpt.name + f".tmp{os.getpid()}")
            torch.save(state, tmp)
            tmp.replace(ckpt)

    total = min(trainer.total_steps, args.max_steps or trainer.total_steps)
    log_file = None
    writer = None
    if rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        (save_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        log_file, writer = open_log(save_dir / "log.csv", trainer.step)
        print(
            f"GHN {trainer.ghn.config} with {sum(p.numel() for p in trainer.ghn.parameters()):,} parameters; "
            f"b_m={config.meta_batch}, batch={config.batch_size}, {batches.steps_per_epoch} steps/epoch, "
            f"{total} steps, {describe_schedule(config)}, {trainer.world_size} process(es) on {device}",
            flush=True,
        )

    prepared = None  # without workers, train_step builds (and times) the architectures itself
    if args.prefetch_workers > 0:
        prefetcher = ArchitecturePrefetcher(
            config, trainer.step, total, trainer.rank, trainer.world_size, workers=args.prefetch_workers
        )
        prepared = iter(prefetcher)
    signal.signal(signal.SIGTERM, _interrupt)  # a killed session still leaves a checkpoint of its last step
    start = time.time()
    last_ckpt = time.time()
    bar = tqdm(total=total, initial=trainer.step, disable=args.quiet or rank != 0, dynamic_ncols=True, unit="step")
    stop_reason = "done"
    stopped_together = False  # every rank left the loop at the same step (not by an error or a signal)
    try:
        while trainer.step < total:
            reason = budget_spent(args, time.time() - start, cpu_minutes())  # also when resumed past it
            reason = agree_to_stop(reason, trainer.device) if distributed else reason
            if reason:
                stop_reason = reason
                break
            ahead = None
            if prepared is not None:
                step, *ahead = next(prepared)
                if step != trainer.step:
                    raise RuntimeError(f"prefetched step {step} while training step {trainer.step}")
            images, targets = batches.batch(trainer.step)
            lr = trainer.optimizer.param_groups[0]["lr"]
            result = trainer.train_step(images, targets, ahead)
            ips = len(targets) * config.meta_batch / result.seconds["total"]
            if rank == 0:
                writer.writerow(
                    {
                        "step": result.step,
                        "epoch": f"{result.step / batches.steps_per_epoch:.4f}",
                        "lr": f"{lr:.3e}",
                        "loss": f"{result.loss:.5f}",
                        "top1": f"{result.top1:.2f}",
                        "skipped": result.reason,
                        "nodes": result.n_nodes,
                        "archs": " ".join(map(str, result.arch_indices)),
                        **{f"{k}_s": f"{result.seconds[k]:.3f}" for k in PHASES},
                        "step_s": f"{result.seconds['total']:.3f}",
                        **{f"{k}_cpu_s": f"{result.cpu_seconds[k]:.3f}" for k in PHASES},
                        "step_cpu_s": f"{result.cpu_seconds['total']:.3f}",
                        "images_per_s": f"{ips:.1f}",
                        "wall_s": f"{time.time() - start:.1f}",
                        "cpu_minutes": f"{cpu_minutes():.2f}",
                    }
                )
                log_file.flush()
                if result.skipped:
                    tqdm.write(f"step {result.step}: skipped the meta-batch ({result.reason})")
            bar.set_postfix(loss=f"{result.loss:.3f}", top1=f"{result.top1:.1f}", img_s=f"{ips:.0f}")
            bar.update(1)
            now = time.time()
            if now - last_ckpt > 60 * args.checkpoint_minutes:
                checkpoint()
                last_ckpt = now
        stopped_together = True
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        bar.close()
        del prepared  # stops the prefetch workers, so that their CPU time is counted
        checkpoint()
        if rank == 0:
            save_final(trainer, save_dir / "final")
            log_file.close()
            print(
                f"{stop_reason}: step {trainer.step}/{total}, {cpu_minutes():.1f} CPU-minutes in total; "
                f"checkpoint {ckpt}, model {save_dir / 'final'}",
                flush=True,
            )
        if distributed:
            if stopped_together:
                # Rank 0 still writes the checkpoint while the others would already tear down their
                # gloo pairs; a rank then exiting mid-teardown was seen to abort once under load.
                dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
