"""The ``fitslim`` command line.

Example:
    $ fitslim demo --quick
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitslim", description="Compress and export models trained with Lightning or Keras."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="train the reference CNN on the bundled digits with Lightning and Keras"
    )
    demo.add_argument("--output", default="fitslim-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a short run (fewer epochs)")
    demo.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--frameworks",
        nargs="+",
        default=["lightning", "keras"],
        choices=["lightning", "keras"],
        help="which frameworks to run (default: both)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitslim`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        from fitslim.demo import format_results, run_demo

        try:
            results = run_demo(
                args.output,
                quick=args.quick,
                frameworks=tuple(args.frameworks),
                epochs=args.epochs,
                seed=args.seed,
            )
        except ValueError as err:
            print(f"fitslim demo: {err}", file=sys.stderr)
            return 2
        print()
        print("Reference digits CNN, test split (bundled scikit-learn digits):")
        print(format_results(results))
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
