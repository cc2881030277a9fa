"""Command line of ghninit: ``python -m ghninit <command>``, one module of this package per command.

Each command module (:mod:`.zoo` for ``list``/``download``, :mod:`.init`, :mod:`.graph`, :mod:`.check`, :mod:`.train`)
exposes :class:`Command` entries; :data:`COMMANDS` lists them in the order ``--help`` shows them.
Each entry names its module, which is imported only when that command is chosen: ``main``
configures the arguments of the command on the command line and no other, so ``--help``, argument
errors and light commands do not pay for importing torch (command modules import it inside their
``run_<name>``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, one-line help, and the module with its ``configure_<name>``/``run_<name>``."""

    name: str
    help: str
    module: str

    def _function(self, kind: str):
        return getattr(importlib.import_module(f"{__name__}.{self.module}"), f"{kind}_{self.name}")

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its sub-parser."""
        self._function("configure")(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; returns its exit status."""
        return self._function("run")(args)


COMMANDS: list[Command] = [
    Command("list", "list the GHNs that load by name", "zoo"),
    Command("download", "download, verify and convert known GHNs into the cache", "zoo"),
    Command("init", "initialise a timm/torchvision model with a GHN and write its state dict to a file", "init"),
    Command("graph", "draw a model's GHN graph (PNG/SVG/PDF) and print its statistics", "graph"),
    Command("check", "check real GHN weights against the reference's published results", "check"),
    Command("train", "train a GHN (GHN-2 or GHN-3) on your own ImageFolder images", "train"),
]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen command; returns its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)  # the top-level parser has only -h
    parser = argparse.ArgumentParser(prog="python -m ghninit", description="ghninit command line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.name == chosen:
            command.configure(command_parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a command that relaunches itself (train --procs)
    return next(c for c in COMMANDS if c.name == args.command).run(args)
