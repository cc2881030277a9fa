"""Train a GHN: a thin caller of ``python -m ghninit train`` (same arguments and run; ``--dataset cifar10`` by default).

    python benchmarks/train_ghn.py --data-dir ../shared/data/cifar10-jpeg --save-dir runs/ghn2   # = python -m ghninit train ...

See ``python -m ghninit train --help`` and docs/training.md. The helpers the tests and docs name
(:data:`CSV_FIELDS`, :func:`open_log`, :func:`default_procs`, :func:`speed_table`) are
re-exported from :mod:`ghninit.training.run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ghninit.cli.train import configure_train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_ghn.py")
    configure_train(parser)
    # old commands keep their data: CIFAR-10 (ImageFolder copy or torchvision's files) with its canonical statistics
    parser.set_defaults(dataset="cifar10")
    args = parser.parse_args(argv)
    args.argv = ["train", *(sys.argv[1:] if argv is None else argv)]
    return args


def main(argv: list[str] | None = None) -> int:
    from ghninit.training.run import train

    return train(parse_args(argv))


def __getattr__(name: str):
    from ghninit.training import run

    return getattr(run, name)


if __name__ == "__main__":
    sys.exit(main())
