"""``list`` and ``download``: which GHNs load by name, and filling the cache with them."""

from __future__ import annotations

import argparse
import json
import sys


def configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the rows of ghninit.list_ghns() as JSON")
    parser.add_argument("--cache-dir", help="cache to look in (default: GHNINIT_CACHE or $XDG_CACHE_HOME/ghninit)")


def run_list(args: argparse.Namespace) -> int:
    from ..zoo.catalog import format_table, list_ghns

    rows = list_ghns(args.cache_dir)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def configure_download(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="known GHN names (see `python -m ghninit list`)")
    parser.add_argument("--cache-dir", help="cache to fill (default: GHNINIT_CACHE or $XDG_CACHE_HOME/ghninit)")
    parser.add_argument("--force", action="store_true", help="download and convert again even if cached")


def run_download(args: argparse.Namespace) -> int:
    from ..zoo.hub import GHNLoadError, download_ghn

    status = 0
    for name in args.names:
        try:
            print(f"{name}: {download_ghn(name, cache_dir=args.cache_dir, force_download=args.force)}")
        except GHNLoadError as err:
            print(f"{name}: error: {err}", file=sys.stderr)
            status = 1
    return status
