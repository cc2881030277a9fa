"""``python -m ghninit``: the command line; the commands live in :mod:`ghninit.cli`."""

from __future__ import annotations

import sys

from .cli import COMMANDS, Command, main

__all__ = ["COMMANDS", "Command", "main"]

if __name__ == "__main__":
    sys.exit(main())
