"""The ``fastrnn`` command line (also ``python -m fastrnn``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    from . import check

    p = sub.add_parser("check", help="compare fastrnn's kernels with torch.nn on the same weights")
    check.add_arguments(p)
    p.set_defaults(run=check.main)
    from .seq2seq import cli as seq2seq_cli

    seq2seq_cli.add_subcommands(sub)  # train, translate, evaluate, demo
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the built-in default job: the seq2seq demo (README's main job)
        args = parser.parse_args(["demo", *(argv or [])])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
