"""Command line of ghninit: ``python -m ghninit <command>``.

Commands: ``list`` (every GHN that loads by name, where it comes from, whether it is cached),
``download NAME...`` (fill the cache now, e.g. on a connected machine for offline ones) and
``check GHN MODEL`` (predict a torchvision model with a GHN-3 and compare the L2 norm of its
parameters with the reference's published figure). Each
command is one entry of :data:`COMMANDS`: a function that adds its arguments to its sub-parser,
and one that runs it; add a command by adding an entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, one-line help, how it adds its arguments, and what it runs (exit code)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows of ghninit.list_ghns() as JSON")
    parser.add_argument("--cache-dir", help="cache to look in (default: GHNINIT_CACHE or $XDG_CACHE_HOME/ghninit)")


def _run_list(args: argparse.Namespace) -> int:
    from .zoo.catalog import format_table, list_ghns

    rows = list_ghns(args.cache_dir)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _configure_download(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="known GHN names (see `python -m ghninit list`)")
    parser.add_argument("--cache-dir", help="cache to fill (default: GHNINIT_CACHE or $XDG_CACHE_HOME/ghninit)")
    parser.add_argument("--force", action="store_true", help="download and convert again even if cached")


def _run_download(args: argparse.Namespace) -> int:
    from .zoo.hub import GHNLoadError, download_ghn

    status = 0
    for name in args.names:
        try:
            print(f"{name}: {download_ghn(name, cache_dir=args.cache_dir, force_download=args.force)}")
        except GHNLoadError as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            status = 1
    return status


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Predict a torchvision model with a GHN-3 and compare the L2 norm of all its parameters with the figure "
        "the reference publishes (ghn3_results.json of SamsungSAILMontreal/ghn3). Exit status 0 when they agree "
        "within 1e-2, 1 when not."
    )
    parser.add_argument("ghn", help="ghn3-t or ghn3-xl (the GHNs with published figures)")
    parser.add_argument("model", help="torchvision model name, e.g. resnet50")
    parser.add_argument("--weights", default=None, help="use this GHN file or folder instead of downloading the GHN")


def _run_check(args: argparse.Namespace) -> int:
    from .zoo.check import check_paramnorm

    try:
        result = check_paramnorm(args.ghn, args.model, args.weights)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print(result)
    return 0 if result.passed else 1


COMMANDS: list[Command] = [
    Command("list", "list the GHNs that load by name", _configure_list, _run_list),
    Command("download", "download, verify and convert known GHNs into the cache", _configure_download, _run_download),
    Command(
        "check",
        "predict a torchvision model with a GHN-3 and compare its parameter norm with the published one",
        _configure_check,
        _run_check,
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m ghninit", description="ghninit command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.configure(sub.add_parser(command.name, help=command.help, description=command.help))
    args = parser.parse_args(argv)
    return next(c for c in COMMANDS if c.name == args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
