"""Importing Hugging Face transformers: the torchvision repair first, and a clear error when it is missing."""

from __future__ import annotations

import importlib
from typing import Any

from usam.errors import UsamError
from usam.torchvision_fix import ensure_torchvision

INSTALL_HINT = "pip install 'usam[transformers]'"
"""What to install for the transformers backend."""


def import_transformers() -> Any:
    """The ``transformers`` module, imported after repairing ``import torchvision`` next to a CPU torch.

    transformers' image processors import torchvision; next to a CPU torch that import fails unless usam's
    torchvision fix has run (see :mod:`usam.torchvision_fix`).

    Raises:
        UsamError: transformers is not installed; the message says what to install.
    """
    try:
        ensure_torchvision()
        return importlib.import_module("transformers")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "transformers":
            raise UsamError(
                f"the transformers backend needs Hugging Face transformers, which is not installed; install it with "
                f"`{INSTALL_HINT}`"
            ) from None
        raise
