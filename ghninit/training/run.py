"""One GHN training run from the command line's arguments: data, config, loop, budgets, logs, checkpoints, card.

:func:`train` is what ``python -m ghninit train`` (arguments in :mod:`ghninit.cli.train`) and
``benchmarks/train_ghn.py`` run: it reads the images (any ImageFolder tree through
:func:`~ghninit.training.data.load_image_folder`, or CIFAR-10 / ImageNet), derives the GHN's
classes, image size and ``max_shape`` from them, builds the :class:`~ghninit.training.trainer.TrainConfig`
from the variant's preset and the explicit options, and runs :class:`~ghninit.training.trainer.Trainer`
under the wall/CPU/step budgets with a progress bar, a CSV log, atomic checkpoints (resumed by
running the same command again) and data-parallel processes (torchrun). At the end it writes
``final/``: the GHN in the Hub layout plus its card (``training.json`` and ``README.md``, see
:mod:`ghninit.training.card`).
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

from ..ghn.presets import DATASET_SHAPES, HID, PRESETS, kernel_limit
from .data import TrainBatches, imagenet_loaders, load_cifar10, load_image_folder
from .trainer import PHASES, ArchitecturePrefetcher, TrainConfig, Trainer

CSV_FIELDS = [
    "step",
    "epoch",
    "lr",
    "loss",
    "norm_reg",
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


def build_config(args: argparse.Namespace, data: dict | None = None) -> TrainConfig:
    """The run's config: the variant's preset, the data's shapes, then every option given explicitly.

    ``data`` holds ``num_classes`` and ``image_size`` of the images (an ImageFolder's
    :class:`~ghninit.training.data.FolderInfo`); ``max_shape`` follows from the image size
    (:func:`~ghninit.ghn.presets.kernel_limit`) and the GHN's width unless ``--max-shape`` is given.
    """
    preset = dict(PRESETS[args.variant])
    if args.dataset == "imagenet":
        shapes = dict(DATASET_SHAPES["imagenet"])
    elif data is not None:
        shapes = {"num_classes": data["num_classes"], "image_size": data["image_size"]}
    else:
        shapes = dict(DATASET_SHAPES["cifar10"])
    overrides: dict = {
        "dataset": args.dataset if args.dataset != "folder" else (data or {}).get("name", "folder"),
        "gamma": args.gamma,
        "epochs": args.epochs,
        "warmup_steps": args.warmup_steps,
        "grad_clip": args.grad_clip,
        "max_nodes": args.max_nodes,
        "num_nets": args.num_nets,
        "seed": args.seed,
        "channels_last": not args.no_channels_last,
        "fast_predict": not args.per_graph_predict,
        "batch_size": 256 if args.dataset == "imagenet" else 64,
    }
    if data is not None and data.get("train_images"):
        overrides["batch_size"] = min(overrides["batch_size"], data["train_images"])
    explicit = {
        "hypernet": args.hypernet,
        "hid": args.hid,
        "layers": args.layers,
        "heads": args.heads,
        "meta_batch": args.meta_batch,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.wd,
        "norm_reg": args.norm_reg,
        "schedule": args.schedule,
    }
    overrides.update({k: v for k, v in explicit.items() if v is not None})
    for flag, key in (("no_ve", "ve"), ("no_norm", "weight_norm"), ("no_ln", "layernorm")):
        if getattr(args, flag):
            overrides[key] = False
    steps = args.lr_steps
    overrides["lr_steps"] = (
        tuple(float(x) for x in steps.split(",") if x) if steps else (args.epochs * 2 / 3, args.epochs * 5 / 6)
    )
    merged = {"hid": HID, **shapes, **preset, **overrides}
    if args.max_shape:
        merged["max_shape"] = tuple(int(x) for x in args.max_shape.split(","))
    else:
        s = kernel_limit(merged["image_size"])
        c = merged["hid"] if merged.get("hypernet") == "graphormer" else 2 * HID
        merged["max_shape"] = (c, c, s, s)
    return TrainConfig(**merged)


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


def save_final(trainer: Trainer, folder: Path, card: dict) -> None:
    """The GHN in the Hub layout (config.json + model.safetensors), a single self-describing
    ``ghn.safetensors``, and its card (``training.json`` + ``README.md``)."""
    from safetensors.torch import save_file

    from .card import write_card

    folder.mkdir(parents=True, exist_ok=True)
    ghn = trainer.ghn
    ghn.save_pretrained(str(folder))
    state = {k: v.detach().cpu().contiguous() for k, v in ghn.state_dict().items()}
    meta = {
        "config": json.dumps(ghn.config),
        "step": str(trainer.step),
        "train_config": json.dumps(trainer.config.to_dict()),
        "card": json.dumps(card),
    }
    save_file(state, str(folder / "ghn.safetensors"), metadata=meta)
    write_card(folder, card)


def default_procs(slots: int, meta_batch: int) -> int:
    """Processes for ``slots`` GPUs or CPU cores: the most, up to ``slots``, that divide the meta-batch."""
    return max(p for p in range(1, max(1, slots) + 1) if meta_batch % p == 0)


def launch_processes(procs: int, argv: list[str]) -> int:
    """Run ``python -m ghninit <argv>`` in ``procs`` data-parallel processes with torchrun's launcher (one machine).

    The processes import this same ghninit (its folder goes first on ``PYTHONPATH``).
    """
    from torch.distributed.run import main as torchrun

    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    torchrun(["--standalone", "--nproc_per_node", str(procs), "-m", "ghninit", *argv])
    return 0


def evaluate_test_nets(
    ghn, config: TrainConfig, data, n_nets: int, device: torch.device, split: str = "test", batch_size: int = 64
) -> dict:
    """Top-1 (%) on ``data`` of the first ``n_nets`` DeepNets-1M TEST networks, all parameters predicted, no training.

    As the GHN-2 paper evaluates: BatchNorm normalises by each test batch's statistics.
    """
    from torch.func import functional_call

    from ..deepnets import generate
    from .trainer import prepare_architecture

    was_training = ghn.training
    ghn.eval()
    top1 = []
    with torch.no_grad():
        for i in range(n_nets):
            arch = prepare_architecture(generate("test", i), config)
            params = {k: v.to(device) for k, v in arch.fallback.items()}
            params.update(ghn(arch.graph))
            net = arch.net.eval()
            correct = 0
            for images, labels in data.batches(batch_size):
                logits = functional_call(net, params, (images.to(device),))
                correct += int((logits.argmax(1).cpu() == labels).sum())
            top1.append(100.0 * correct / len(data))
    ghn.train(was_training)
    return {
        "split": split,
        "images": len(data),
        "networks": f"DeepNets-1M TEST 0-{n_nets - 1}",
        "top1": [round(t, 2) for t in top1],
        "mean_top1": round(sum(top1) / len(top1), 2),
        "protocol": "predicted parameters, no training; BatchNorm with test-batch statistics, batch 64",
    }


def make_card(
    args: argparse.Namespace,
    argv: list[str],
    trainer: Trainer,
    data: dict | None,
    steps_per_epoch: int,
    device: torch.device,
    cpu_minutes: float,
    wall_minutes: float,
    stop_reason: str,
    evaluation: dict | None,
) -> dict:
    """What the trained GHN has seen and cost: data, variant, steps, CPU/GPU time (see :mod:`.card`)."""
    import datetime

    from .. import __version__

    c = trainer.config
    if data is None:
        data = {"name": c.dataset, "path": str(Path(args.data).resolve()), "num_classes": c.num_classes,
                "image_size": c.image_size}  # fmt: skip
    gpu = device.type == "cuda"
    return {
        "ghninit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m ghninit " + " ".join(argv),
        "variant": args.variant,
        "ghn_class": type(trainer.ghn).__name__,
        "parameters": sum(p.numel() for p in trainer.ghn.parameters()),
        "data": data,
        "training": {
            "steps": trainer.step,
            "epochs": round(trainer.step / steps_per_epoch, 4),
            "stop_reason": stop_reason,
            "skipped_steps": len(trainer.skipped),
            "processes": trainer.world_size,
            "device": str(device.type),
            "cpu_minutes_rank0": round(cpu_minutes, 2),
            "wall_minutes": round(wall_minutes, 2),
            "gpu_minutes": round(wall_minutes * trainer.world_size, 2) if gpu else 0.0,
            "norm_reg": c.norm_reg,
            "optimizer": c.optimizer,
        },
        "train_config": c.to_dict(),
        "evaluation": evaluation,
    }


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def load_training_data(args: argparse.Namespace, batch_size: int | None = None) -> tuple[object, object, dict | None]:
    """``(train data, evaluation data or None, data description for the card or None)`` for ``--dataset``.

    An ImageFolder (``--dataset folder``) is decoded at ``--image-size`` (or its images' median
    shorter side); its description is its :class:`~ghninit.training.data.FolderInfo`.
    """
    if args.dataset == "folder":
        if args.image_size is not None and args.image_size % size_multiple(args.image_size):
            m = size_multiple(args.image_size)
            raise SystemExit(
                f"--image-size {args.image_size}: DeepNets-1M networks halve the resolution several times, so the "
                f"size must be a multiple of {m} (e.g. {max(m, m * round(args.image_size / m))})"
            )
        train_data, eval_data, info = load_image_folder(args.data, args.image_size, multiple=16)
        if info.image_size % size_multiple(info.image_size):
            train_data, eval_data, info = load_image_folder(args.data, _round_size(info.image_size))
        return train_data, eval_data, info.to_dict()
    if args.dataset == "cifar10":
        train_data = load_cifar10(args.data, True, download=args.download)
        try:
            eval_data = load_cifar10(args.data, False, download=args.download)
        except (OSError, RuntimeError):
            eval_data = None
        return train_data, eval_data, None
    return None, None, None


def size_multiple(image_size: int) -> int:
    """What an image side must be a multiple of for every DeepNets-1M network (stem and reductions halve it)."""
    return 32 if image_size > 64 else 16


def _round_size(image_size: int) -> int:
    m = size_multiple(image_size)
    return max(m, m * round(image_size / m))


def train(args: argparse.Namespace) -> int:
    """Run (or resume) one training run as ``python -m ghninit train`` describes; returns the exit status."""
    if args.speed_table:
        print(speed_table(args.speed_table))
        return 0
    argv = list(getattr(args, "argv", None) or ["train", *sys.argv[1:]])
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    meta_batch = args.meta_batch or PRESETS[args.variant]["meta_batch"]
    if args.procs is None:
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        args.procs = default_procs(gpus or cores, meta_batch)
    if args.procs > 1 and not distributed:
        return launch_processes(args.procs, argv)
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

    train_data, eval_data, data_info = load_training_data(args)
    config = build_config(args, data_info)
    if train_data is not None:
        padding = max(1, config.image_size // 8)  # CIFAR-10's 4 pixels at 32
        batches = TrainBatches(train_data, config.batch_size, config.seed, padding=padding)
    else:
        train_loader, _ = imagenet_loaders(args.data, config.batch_size, args.workers, config.image_size)
        batches = ImageNetBatches(train_loader, config.seed)

    ghn = None
    if args.init:
        from ghninit import load_ghn

        ghn = load_ghn(args.init)
    trainer = Trainer(config, ghn=ghn, device=device, distributed=distributed, steps_per_epoch=batches.steps_per_epoch)
    ckpt = save_dir / "checkpoint.pt"
    cpu_before = wall_before = 0.0
    if ckpt.exists() and not args.no_resume:
        trainer.load(ckpt)
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        cpu_before, wall_before = saved.get("cpu_minutes", 0.0), saved.get("wall_minutes", 0.0)
        before = (saved.get("data") or {}).get("files_sha256")
        if rank == 0 and data_info and before and before != data_info["files_sha256"]:
            print(
                f"warning: {args.data} is not the file list this run started on (sha256 {before[:12]}...)", flush=True
            )
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
            state["data"] = data_info
            state["wall_minutes"] = wall_before + (time.time() - start) / 60
            save_dir.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_name(ckpt.name + f".tmp{os.getpid()}")
            torch.save(state, tmp)
            tmp.replace(ckpt)

    start = time.time()
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
                        "norm_reg": f"{result.norm_reg:.5f}",
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
            log_file.close()
            evaluation = None
            if eval_data is not None and args.eval_nets > 0 and stopped_together:
                subset = eval_data.subset(args.eval_images)
                split = (data_info or {}).get("eval_split") or "test"
                evaluation = evaluate_test_nets(trainer.ghn, config, subset, args.eval_nets, device, split)
                print(
                    f"top-1 on {evaluation['images']} {evaluation['split']} images, mean of {args.eval_nets} unseen "
                    f"DeepNets-1M TEST networks with predicted parameters: {evaluation['mean_top1']:.2f}%",
                    flush=True,
                )
            card = make_card(
                args, argv, trainer, data_info, batches.steps_per_epoch, device, cpu_minutes(),
                wall_before + (time.time() - start) / 60, stop_reason, evaluation,
            )  # fmt: skip
            save_final(trainer, save_dir / "final", card)
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
