"""Command line: ``python -m ghninit check GHN MODEL`` compares a prediction with the published figures."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ghninit", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="predict a torchvision model and compare its parameter norm with the reference's published one",
        description="Predict a torchvision model with a GHN-3 and compare the L2 norm of all its parameters with "
        "the figure the reference publishes (ghn3_results.json of SamsungSAILMontreal/ghn3). Exit status 0 when "
        "they agree within 1e-2, 1 when not.",
    )
    check.add_argument("ghn", help="ghn3-t or ghn3-xl (the GHNs with published figures)")
    check.add_argument("model", help="torchvision model name, e.g. resnet50")
    check.add_argument("--weights", default=None, help="use this GHN file or folder instead of downloading GHN")
    args = parser.parse_args(argv)

    from .check import check_paramnorm

    try:
        result = check_paramnorm(args.ghn, args.model, args.weights)
    except KeyError as err:
        parser.error(str(err.args[0]))
    print(result)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
