"""The fastrnn command line (also: python -m fastrnn)."""

from __future__ import annotations

import argparse
import functools
import sys
from importlib import metadata

DESCRIPTION = (
    "fastrnn: torch.nn RNN/LSTM/GRU layers whose time loop runs in Triton kernels, and a seq2seq "
    "encoder-decoder built on them. Without a command: the demo."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that states every option's default.

    ``(default: X)`` is appended to an option's help unless the help already names its default;
    a flag without a value (``store_true``/``store_false``) shows ``(default: off)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "default" in help or action.default is argparse.SUPPRESS or action.required or not action.option_strings:
            return help
        if action.nargs == 0:
            return f"{help} (default: off)"
        return f"{help} (default: %(default)s)"


def _version() -> str:
    from ._version import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"fastrnn {__version__} (torch {installed('torch')}, triton {installed('triton')}, Python {sys.version.split()[0]})"  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``fastrnn`` parser: ``check`` and the seq2seq commands, every one with ``--help``."""
    parser = argparse.ArgumentParser(prog="fastrnn", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(
        dest="command",
        title="commands",
        metavar="COMMAND",
        help="fastrnn COMMAND --help lists the options of one",
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=HelpFormatter),
    )
    from . import check

    p = sub.add_parser(
        "check",
        help="compare fastrnn's kernels with torch.nn on the same weights",
        description="Run RNN, LSTM and GRU through fastrnn's Triton kernels (Triton's interpreter on a CPU) and "
        "through torch.nn on the same weights; print the largest differences of the outputs and of every "
        "gradient, and the time of a forward+backward of each.",
    )
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
