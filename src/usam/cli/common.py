"""What every ``usam`` subcommand shares: the one-line-error parser, argument types, options, warnings.

Warnings reach a CLI user through one printer (:data:`WARNINGS`): ``usam: warning: ...`` lines on stderr, each
distinct warning once per command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

from usam.errors import UsamError, UsamWarning

EXIT_USER_ERROR = 2


class WarningPrinter:
    """Prints warnings for a CLI user as ``usam: <kind>: <message>`` lines on stderr, each distinct one once."""

    def __init__(self) -> None:
        self._printed: set[tuple[str, str]] = set()

    def print(self, message: str, kind: str = "warning", stream: TextIO | None = None) -> None:
        """Print ``usam: {kind}: {message}`` unless this exact line was printed before."""
        key = (kind, str(message))
        if key in self._printed:
            return
        self._printed.add(key)
        print(f"usam: {kind}: {message}", file=stream or sys.stderr)

    @contextlib.contextmanager
    def routing_python_warnings(self) -> Iterator[None]:
        """Route Python warnings of category :class:`usam.UsamWarning` through :meth:`print` inside the block.

        Other warnings keep Python's own display. Each block (one command) starts with nothing printed yet.
        """
        self._printed.clear()
        with warnings.catch_warnings():
            # Always hand usam's warnings to us: the de-duplication is ours, by message, not Python's by line.
            warnings.simplefilter("always", UsamWarning)
            original = warnings.showwarning

            def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
                if issubclass(category, UsamWarning):
                    self.print(str(message))
                else:
                    original(message, category, *args, **kwargs)

            warnings.showwarning = show
            yield


WARNINGS = WarningPrinter()
"""The one printer of the ``usam`` process: every command prints its warnings and notes through it."""


def warn(message: str) -> None:
    """Print ``usam: warning: {message}`` once per process."""
    WARNINGS.print(message)


def note(message: str) -> None:
    """Print ``usam: note: {message}`` once per process."""
    WARNINGS.print(message, kind="note")


def prepare_output_folder(folder: Path, what: str = "output folder") -> Path:
    """Create ``folder`` (with parents) before any expensive work, or fail with a one-line error.

    Raises:
        UsamError: The folder cannot be created or written to (a file in the way, no permission, ...).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsamError(f"cannot create the {what} {folder}: a file is in the way; choose another folder") from None
    except OSError as error:
        raise UsamError(f"cannot create the {what} {folder} ({error.strerror}); choose another folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsamError(f"cannot write to the {what} {folder} (permission denied); choose another folder")
    return folder


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
        "--model",
        default="sam2.1-tiny",
        help="SAM2 model name (see `usam models`), or the model card of your own SAM2 (a file ending with .json, "
        ".yaml or .yml: config, overrides, checkpoint, size; see the README); default %(default)s",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="local SAM2 checkpoint file; without it the official checkpoint is downloaded on first use into the "
        "cache folder ($USAM_CACHE_DIR, default ~/.cache/usam); not with a model card, which names its own",
    )
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: CUDA if available, else CPU)")
    parser.add_argument(
        "--hydra-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="advanced: extra Hydra override for the SAM2 config (repeatable), e.g. ++model.image_size=512 for a "
        "checkpoint fine-tuned at another resolution (the size must be a multiple of 32)",
    )
