"""Readers for the segmentation datasets UncertainSAM is trained and evaluated on, and for your own data.

Each reader lists the image keys of one split cheaply and loads :class:`Sample` objects (an RGB image with one
boolean mask per ground-truth object) on demand::

    from usam.datasets import open_dataset

    reader = open_dataset("davis", "/data/DAVIS", "val", every=5, limit=100)
    for sample in reader:
        ...
    print(reader.skipped)  # samples whose files were missing or broken

Readers: ``coco`` (COCO 2017), ``ade20k`` (ADEChallengeData2016), ``davis`` (DAVIS 2017), ``mose``
(MOSE), ``sav`` (SA-V) and ``folder`` (``root/images`` + ``root/masks/<image>/<object>.png``). Each module
documents its on-disk layout. COCO and SA-V need the optional ``data`` dependencies
(``pip install "usam[data]"``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from usam.datasets.ade20k import Ade20kReader
from usam.datasets.base import DatasetFileError, DatasetReader, Sample, SkippedSample
from usam.datasets.coco import CocoReader
from usam.datasets.davis import DavisReader
from usam.datasets.folder import FolderReader
from usam.datasets.mose import MoseReader
from usam.datasets.sav import SavReader
from usam.errors import DatasetError, InvalidInputError

#: Reader classes by dataset name.
DATASETS: dict[str, type[DatasetReader]] = {
    reader.name: reader for reader in (CocoReader, Ade20kReader, DavisReader, MoseReader, SavReader, FolderReader)
}


def _options(reader_class: type[DatasetReader]) -> list[str]:
    """Keyword options of a reader: its own, then (through ``**selection``) those of its base classes."""
    options: list[str] = []
    for klass in reader_class.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        options += [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in options]
        if all(p.kind is not p.VAR_KEYWORD for p in parameters):
            break
    return options


def open_dataset(name: str, root: str | Path, split: str, **kwargs: Any) -> DatasetReader:
    """Open the reader of a dataset by name.

    Args:
        name: One of :data:`DATASETS` (case-insensitive), e.g. ``"coco"``.
        root: Dataset folder; see the reader's module for the expected layout.
        split: Split name, e.g. ``"train"`` or ``"val"``.
        **kwargs: Reader options: ``every``, ``start``, ``stop``, ``limit`` for all readers, and
            ``resolution`` for DAVIS.

    Returns:
        The reader; nothing is decoded until it is iterated or :meth:`DatasetReader.load` is called.

    Raises:
        DatasetError: Unknown dataset name, or the dataset's layout is not found under ``root``.
        InvalidInputError: An option the reader does not take, or an out-of-range option.
    """
    reader_class = DATASETS.get(name.lower()) if isinstance(name, str) else None
    if reader_class is None:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    options = _options(reader_class)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise InvalidInputError(
            f"dataset {reader_class.name!r} takes no option {', '.join(unknown)}; its options: {', '.join(options)}"
        )
    return reader_class(root, split, **kwargs)


__all__ = [
    "DATASETS",
    "Ade20kReader",
    "CocoReader",
    "DatasetError",
    "DatasetFileError",
    "DatasetReader",
    "DavisReader",
    "FolderReader",
    "MoseReader",
    "Sample",
    "SavReader",
    "SkippedSample",
    "open_dataset",
]
