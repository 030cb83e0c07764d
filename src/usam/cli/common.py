"""What every ``usam`` subcommand shares: the one-line-error parser, argument types, model options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

EXIT_USER_ERROR = 2


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like usam's other user errors."""

    def error(self, message: str) -> NoReturn:
        """Print the usage error as one line and exit with status 2."""
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parse_pair(text: str) -> tuple[float, float]:
    """An ``X,Y`` argument as two floats (argparse type)."""
    return tuple(parse_numbers(text, 2, "X,Y"))  # type: ignore[return-value]


def parse_box(text: str) -> tuple[float, float, float, float]:
    """An ``X0,Y0,X1,Y1`` argument as four floats (argparse type)."""
    return tuple(parse_numbers(text, 4, "X0,Y0,X1,Y1"))  # type: ignore[return-value]


def parse_numbers(text: str, count: int, form: str) -> list[float]:
    """``count`` comma-separated numbers, or an argparse error that shows the expected ``form``."""
    parts = text.split(",")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {form} (numbers separated by commas), got {text!r}")
    return values


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose and load a SAM2 model (name, checkpoint, device, Hydra overrides)."""
    parser.add_argument(
        "--model", default="sam2.1-tiny", help="SAM2 model name (see `usam models`); default %(default)s"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="local SAM2 checkpoint file; without it the official checkpoint is downloaded on first use into the "
        "cache folder ($USAM_CACHE_DIR, default ~/.cache/usam)",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: CUDA if available, else CPU)")
    parser.add_argument(
        "--hydra-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="advanced: extra Hydra override for the SAM2 config (repeatable), e.g. ++model.image_size=512 for a "
        "checkpoint fine-tuned at another resolution",
    )
