"""``train``: train a GHN (GHN-2, GHN-1, the MLP baseline or a GHN-3 size) on any ImageFolder tree.

This module only declares the command's arguments (it imports no torch, so ``--help`` is fast);
the run itself is :func:`ghninit.training.run.train`. ``benchmarks/train_ghn.py`` is a thin caller
of the same parser and run.
"""

from __future__ import annotations

import argparse

DESCRIPTION = "Train a GHN on DeepNets-1M architectures and your own images (an ImageFolder tree), with one command."

EPILOG = """\
examples:
  # GHN-2 on your images: DIR/train/<class>/*, DIR/test/ (or val/) to evaluate; any image size
  python -m ghninit train --data DIR --variant ghn2 --save-dir runs/my-ghn2 --max-minutes 60
  # the smallest published GHN-3 (T) with the GHN-3 paper's settings (AdamW, norm regulariser 3e-5)
  python -m ghninit train --data DIR --variant ghn3 --save-dir runs/my-ghn3 --max-minutes 60
  # the same command again resumes from runs/my-ghn3/checkpoint.pt; then:
  #   ghninit.initialize(model, ghn="runs/my-ghn3/final")
  # data-parallel: 2 processes (gloo on CPU, nccl on GPUs), the meta-batch split over them
  python -m ghninit train --data DIR --procs 2 ...
  torchrun --nproc_per_node 2 -m ghninit train --data DIR ...          # the same

outputs in --save-dir: checkpoint.pt (rewritten every --checkpoint-minutes and at exit), log.csv
(one row per step), train_config.json, and final/ (config.json + model.safetensors, loadable with
ghninit.load_ghn; training.json and README.md: the card naming the data, variant, steps and time).
"""

VARIANTS = ("ghn2", "ghn1", "mlp", "ghn3", "ghn3-tiny", "ghn3-t", "ghn3-s", "ghn3-l", "ghn3-xl")


def configure_train(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``python -m ghninit train`` (and of ``benchmarks/train_ghn.py``)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        "--data-dir",
        dest="data",
        default="./data",
        help="an ImageFolder tree: train/<class>/<image>, and test/ or val/ to evaluate (default: ./data)",
    )
    d.add_argument(
        "--dataset",
        default="folder",
        choices=["folder", "cifar10", "imagenet"],
        help="folder (default): any ImageFolder tree, decoded once at --image-size; cifar10: also torchvision's "
        "download folder, with the canonical CIFAR-10 statistics; imagenet: streamed with the usual transforms",
    )
    d.add_argument(
        "--image-size",
        type=int,
        help="square side images are resized to (default: the median shorter side of the training images)",
    )
    d.add_argument("--download", action="store_true", help="--dataset cifar10: download with torchvision if absent")
    d.add_argument("--workers", type=int, default=4, help="--dataset imagenet: data-loading workers (default: 4)")

    g = parser.add_argument_group("GHN")
    g.add_argument(
        "--variant",
        "--preset",
        dest="variant",
        choices=VARIANTS,
        default="ghn2",
        help="ghn2 (default), ghn1, mlp, or a GHN-3 size: ghn3 (= ghn3-t, the smallest published), ghn3-s, "
        "ghn3-l, ghn3-xl, or ghn3-tiny (for trials)",
    )
    g.add_argument("--hypernet", choices=["gatedgnn", "mlp"], help="GHN-2 family: gated GNN or none (MLP baseline)")
    g.add_argument("--no-ve", action="store_true", help="no virtual edges (ablation)")
    g.add_argument("--no-norm", action="store_true", help="no normalisation of predicted parameters (ablation)")
    g.add_argument("--no-ln", action="store_true", help="no LayerNorm on node states (ablation)")
    g.add_argument("--hid", type=int, help="node state size (default: 32 for GHN-2, the size's width for GHN-3)")
    g.add_argument("--layers", type=int, help="GHN-3: Graphormer layers (default: the size's)")
    g.add_argument("--heads", type=int, help="GHN-3: attention heads (default: the size's)")
    g.add_argument(
        "--max-shape",
        type=str,
        help="largest predicted block out,in,S,S (default: from the data: S = 11 below 128 pixels, else 16; "
        "out = in = 64 for GHN-2, hid for GHN-3)",
    )

    t = parser.add_argument_group("optimisation (default: the variant's reference settings)")
    t.add_argument("-m", "--meta-batch", type=int, help="architectures per image batch, b_m (default: 8; ghn1: 1)")
    t.add_argument("-b", "--batch-size", type=int, help="images per batch (default: 64, or the data set if smaller)")
    t.add_argument("--optimizer", choices=["adam", "adamw"], help="default: adam (GHN-2 family), adamw (GHN-3)")
    t.add_argument("--lr", type=float, help="learning rate (default: 1e-3 GHN-2, 4e-4 GHN-3)")
    t.add_argument("--wd", type=float, help="weight decay (default: 1e-5 GHN-2, 1e-2 GHN-3)")
    t.add_argument(
        "--norm-reg",
        type=float,
        help="weight of the GHN-3 paper's regulariser: the sum of Frobenius norms of each network's predicted "
        "tensors is added to its loss (default: 3e-5 GHN-3, 0 GHN-2 family)",
    )
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
        help="step: multiply by --gamma at --lr-steps (GHN-2 paper); cosine: decay to zero over --epochs "
        "(default: step for GHN-2, cosine for GHN-3)",
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

    r = parser.add_argument_group("run")
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
        "--eval-nets",
        type=int,
        default=8,
        help="at the end, top-1 on the test/val images of this many unseen DeepNets-1M TEST networks with "
        "predicted parameters (no training; written to the card; 0: skip; default: 8)",
    )
    r.add_argument(
        "--eval-images",
        type=int,
        default=1000,
        help="class-balanced test/val images for that evaluation (default: 1000, as cifar10-mini's TEST figures)",
    )
    r.add_argument(
        "--procs",
        type=int,
        help="data-parallel processes started by this call with torchrun's launcher (gloo on CPU, nccl on "
        "GPUs); the meta-batch is split over them. Ignored under torchrun (default: one per GPU, else one per "
        "CPU core, as many as divide the meta-batch)",
    )
    r.add_argument(
        "--threads", type=int, help="torch CPU threads per process (default: the CPU cores divided by --procs)"
    )
    r.add_argument(
        "--prefetch-workers",
        type=int,
        help="processes per training process that build the next steps' architectures and graphs ahead of the "
        "step loop; 0 builds them inline (default: 1 on a GPU or when a CPU core is left over, else 0)",
    )
    r.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    r.add_argument("--no-channels-last", action="store_true", help="keep NCHW activations in the target networks")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--per-graph-predict",
        action="store_true",
        help="GHN-2: predict with GHN2.forward one graph at a time (full 64x64 decoding) instead of the batched, "
        "channel-restricted path; same results, slower (for speed comparisons)",
    )
    r.add_argument(
        "--speed-table",
        nargs="+",
        metavar="LOG_CSV",
        help="print the per-phase time table (markdown) of these log.csv files and exit",
    )


def run_train(args: argparse.Namespace) -> int:
    from ..training.run import train

    return train(args)
