"""The ``usam`` command line: one module per group of subcommands, wired together here.

Every user error (a bad image, prompt, heads file or checkpoint, no network) is printed as one line on stderr and
ends the command with exit status 2, without a traceback. Warnings are ``usam: warning: ...`` lines on stderr, each
printed once (see :mod:`usam.cli.common`). Output piped into a reader that stops early (``usam heads-info F | head``)
ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from usam.cli import (
    benchmark,
    calibrate,
    clicks,
    demo,
    evaluate,
    extract,
    heads,
    predict,
    segment_everything,
    testbed,
    train,
    uses,
    video,
)
from usam.cli.common import EXIT_USER_ERROR, WARNINGS, UsageParser
from usam.errors import UsamError

_SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    predict.add_predict,
    predict.add_selfcheck,
    video.add_video,
    segment_everything.add_segment_everything,
    heads.add_models,
    heads.add_convert_heads,
    heads.add_heads_info,
    extract.add_extract,
    extract.add_store_info,
    train.add_train,
    calibrate.add_calibrate,
    evaluate.add_evaluate,
    segment_everything.add_evaluate_automatic,
    uses.add_evaluate_uses,
    uses.add_pseudo_labels,
    benchmark.add_benchmark,
    testbed.add_testbed,
    clicks.add_next_click,
    clicks.add_evaluate_clicks,
    demo.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``usam`` argument parser with all subcommands."""
    from usam import __version__

    parser = UsageParser(
        prog="usam",
        description="UncertainSAM: uncertainty estimates for every mask of Segment Anything 2.",
        epilog="Run 'usam COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"usam {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``usam`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version, or a usage error already printed
        return int(exit_request.code or 0)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        with warnings.catch_warnings(), WARNINGS.routing_python_warnings():
            # SAM2's predictor scripts a function with torch.jit, which torch deprecates; not the user's business.
            warnings.filterwarnings("ignore", message=".*torch.jit.*", category=DeprecationWarning)
            status = args.handler(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
            return status
    except UsamError as error:
        print(f"usam: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except KeyboardInterrupt:
        print("usam: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null so that Python's final flush stays quiet.

    This is the recipe of Python's documentation (signal module, "Note on SIGPIPE").
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (e.g. captured by a test): nothing will flush to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
