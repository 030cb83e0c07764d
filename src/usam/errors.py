"""Exceptions raised by usam.

Every error that a user can cause (bad input, a broken file, no network) is a :class:`UsamError`.
The command line prints such an error as one line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class UsamError(Exception):
    """Base class of the errors a user can cause and fix."""


class InvalidInputError(UsamError, ValueError):
    """An image, a prompt or an argument is not usable as given."""


class HeadsFileError(UsamError):
    """A heads file or folder is missing, corrupt, or does not fit the model."""


class CheckpointError(UsamError):
    """A SAM2 checkpoint is missing, corrupt, or belongs to another model."""


class DownloadError(UsamError):
    """A file could not be downloaded."""


class DatasetError(UsamError):
    """A dataset file is missing or malformed."""


class StoreError(UsamError):
    """A token store is missing, corrupt, or was written with an incompatible schema."""


class UsamWarning(UserWarning):
    """Something a user should know that does not stop the work; the command line prints each one once, as a line."""
