"""Reading a token store: :class:`StoreReader`, the one way training, evaluation and the CLI read a store.

``StoreReader(root)`` opens and checks the store once (store file, schema version, every part's footer) and then
answers what the store holds (models, datasets, token sizes, rows, manifests) and reads columns in batches, turning
every reading error into a one-line :class:`~usam.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from usam.errors import StoreError
from usam.presets import TieRule
from usam.store.layout import (
    MANIFEST_PATTERN,
    ShardManifest,
    check_part_footer,
    empty_images_paths,
    part_paths,
    read_empty_images,
    read_manifest,
    read_store_file,
    schema_of_store_file,
)
from usam.store.schema import NUM_MASK_TOKENS, SCHEMA_VERSION, SIGNAL_COLUMNS, token_arrays
from usam.validation import check_int

DEFAULT_BATCH_ROWS = 16384
"""Rows per batch of :meth:`StoreReader.iter_batches`: large enough for fast numpy work, small enough for the RAM
(a row with float32 tokens is about 11 kB)."""


@contextlib.contextmanager
def reading_errors(description: str) -> Iterator[None]:
    """Turn I/O and Arrow errors raised while reading a store into a :class:`StoreError` naming ``description``."""
    try:
        yield
    except (OSError, pa.ArrowException) as error:
        raise StoreError(
            f"cannot read {description}: {error}. Check the store (usam store-info) and delete or restore "
            "a corrupt part"
        ) from error


class StoreReader:
    """A token store opened for reading.

    Args:
        root: The store directory.

    Raises:
        StoreError: If ``root`` is missing or not a store, was written with another schema version, or a part is
            corrupt, truncated or has another schema.

    Example:
        >>> reader = StoreReader("store")  # doctest: +SKIP
        >>> for table in reader.iter_batches(["model", "iou_token"]):  # doctest: +SKIP
        ...     tokens = reader.tokens(table, "iou_token", np.float32)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self._content = read_store_file(self.root)
        self.schema: pa.Schema = schema_of_store_file(self._content)
        """The row schema of the store's parts."""
        paths = part_paths(self.root)
        self._part_rows = {path.name: check_part_footer(path, self.schema) for path in paths}
        self._dataset = ds.dataset([str(path) for path in paths], schema=self.schema, format="parquet")
        self._distinct: dict[str, list[str]] = {}

    @classmethod
    def from_table(cls, table: pa.Table, options: dict[str, Any] | None = None) -> StoreReader:
        """A reader over rows in memory (any subset of a store's columns), e.g. for training on a table.

        Args:
            table: Rows in the store's layout.
            options: What the rows' extraction recorded (:attr:`options`), if anything.

        Example:
            >>> import pyarrow as pa
            >>> StoreReader.from_table(pa.table({"model": ["sam2.1-tiny", "sam2.1-large"]})).models()
            ['sam2.1-large', 'sam2.1-tiny']
        """
        reader = cls.__new__(cls)
        reader.root = Path("<table in memory>")
        reader._content = {"metadata": dict(options or {})}
        reader.schema = table.schema
        reader._part_rows = {"<table in memory>": table.num_rows}
        reader._dataset = ds.dataset(table)
        reader._distinct = {}
        return reader

    @property
    def metadata(self) -> dict[str, Any]:
        """The content of the store's ``_usam_store.json`` (a copy).

        Format, schema version, token type and sizes, shard count, and under ``"metadata"`` the options and
        identity of the extraction job.
        """
        return copy.deepcopy(self._content)

    @property
    def options(self) -> dict[str, Any]:
        """The extraction job's recorded options (``metadata["metadata"]``, a copy)."""
        return copy.deepcopy(self._content.get("metadata", {}))

    @property
    def columns(self) -> list[str]:
        """The store's column names."""
        return list(self.schema.names)

    @property
    def schema_version(self) -> int | None:
        """The store's schema version (:data:`usam.store.READABLE_SCHEMA_VERSIONS`); None for a table in memory."""
        return self._content.get("schema_version")

    def check_columns(self, columns: Sequence[str], purpose: str = "this read") -> None:
        """Refuses columns the store lacks, saying what to do; a store from before the signals gets its own advice.

        Args:
            columns: The columns needed.
            purpose: What needs them, for the message (e.g. ``"training heads that read signals"``).

        Raises:
            StoreError: If a column is missing.
        """
        missing = [name for name in columns if name not in self.schema.names]
        if not missing:
            return
        lacking_signals = [name for name in missing if name in SIGNAL_COLUMNS]
        if lacking_signals and self.schema_version is not None and self.schema_version < SCHEMA_VERSION:
            raise StoreError(
                f"{self._description} has schema version {self.schema_version}, which has no SAM2 signal columns "
                f"({', '.join(lacking_signals)}) that {purpose} needs; extract it again with `usam extract` into a "
                "new directory (or use heads and measures that read tokens only)."
            )
        raise StoreError(
            f"{self._description} has no column(s) {', '.join(missing)} that {purpose} needs; its columns are those "
            "of usam.store.row_schema()."
        )

    @property
    def tie_rule(self) -> TieRule | None:
        """The tie rule the extraction recorded (which of equally good masks is the best), or None if none is.

        Raises:
            StoreError: If the recorded value is not a tie rule.
        """
        value = self._content.get("metadata", {}).get("tie_rule")
        if value is None:
            return None
        if value not in TieRule.values():
            raise StoreError(
                f"{self._description} records the tie rule {value!r}, which is not one of "
                f"{', '.join(TieRule.values())}; fix its metadata or give the tie rule explicitly"
            )
        return TieRule(value)

    @property
    def token_dim(self) -> int:
        """Values per decoder token, from the schema."""
        if "iou_token" not in self.schema.names:
            # Rows without IoU tokens (a table of some columns) do not say it: the schema's default token count.
            return int(self.schema.field("mask_tokens").type.list_size) // NUM_MASK_TOKENS
        return int(self.schema.field("iou_token").type.list_size)

    @property
    def num_mask_tokens(self) -> int:
        """Mask tokens per row, from the schema."""
        return int(self.schema.field("mask_tokens").type.list_size) // self.token_dim

    @property
    def num_rows(self) -> int:
        """Rows in the store (from the parts' footers, without reading data)."""
        return sum(self._part_rows.values())

    @property
    def dataset(self) -> ds.Dataset:
        """The underlying ``pyarrow.dataset.Dataset``, for reads this class does not offer."""
        return self._dataset

    def models(self) -> list[str]:
        """Sorted names of the SAM2 models with rows in the store."""
        return self._distinct_values("model")

    def datasets(self) -> list[str]:
        """Sorted names of the datasets with rows in the store."""
        return self._distinct_values("dataset")

    def count_rows(self, filter: ds.Expression | None = None) -> int:
        """Rows that pass ``filter`` (all rows without one)."""
        if filter is None:
            return self.num_rows
        with reading_errors(self._description):
            return self._dataset.count_rows(filter=filter)

    def iter_batches(
        self,
        columns: Sequence[str],
        filter: ds.Expression | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> Iterator[pa.Table]:
        """Reads ``columns`` of the rows that pass ``filter`` as tables of at most ``batch_rows`` rows.

        Rows come in no guaranteed order; empty batches are skipped.

        Args:
            columns: Columns to read.
            filter: Optional row filter, e.g. ``pyarrow.compute.field("model") == "sam2.1-tiny"``.
            batch_rows: Largest number of rows per table.

        Yields:
            Tables with the requested columns.

        Raises:
            StoreError: If a column is not in the store, or a part cannot be read.
        """
        check_int(batch_rows, "batch_rows", minimum=1)
        columns = self._checked_columns(columns)
        with reading_errors(self._description):
            for batch in self._dataset.to_batches(columns=columns, filter=filter, batch_size=batch_rows):
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])

    def read(self, columns: Sequence[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
        """Reads ``columns`` (all by default) of the rows that pass ``filter`` into one table, in no guaranteed order.

        Raises:
            StoreError: If a column is not in the store, or a part cannot be read (naming the part).
        """
        columns = self.columns if columns is None else self._checked_columns(columns)
        try:
            return self._dataset.to_table(columns=columns, filter=filter)
        except (OSError, pa.ArrowException) as error:
            bad_part = _find_unreadable_part(self._dataset.files, columns)
            where = f"The part {bad_part}" if bad_part else f"A part of {self.root}"
            raise StoreError(
                f"{where} cannot be read: {error}. Delete that part (its images are extracted again on the next "
                "run) or restore a complete copy."
            ) from error

    def tokens(self, table: pa.Table, column: str, dtype: npt.DTypeLike | None = None) -> np.ndarray:
        """A fixed-size-list column of ``table`` as a numpy array (see :func:`usam.store.token_arrays`).

        The ``*mask_tokens`` columns come as ``(N, num_mask_tokens, token_dim)``, the others as ``(N, k)``.
        """
        return token_arrays(table, column, dtype, num_mask_tokens=self.num_mask_tokens)

    def manifests(self) -> dict[str, ShardManifest]:
        """Each shard's manifest, by shard tag (e.g. ``"00000-of-00001"``).

        Raises:
            StoreError: If a manifest is corrupt or malformed (one line naming the file).
        """
        names = sorted(name for name in _listdir(self.root) if MANIFEST_PATTERN.fullmatch(name))
        return {MANIFEST_PATTERN.fullmatch(name)[1]: read_manifest(self.root / name) for name in names}

    def info(self) -> dict[str, Any]:
        """What the store holds, as JSON-ready data.

        Returns:
            The store file's fields (``format``, ``schema_version``, ``token_dtype``, ``num_shards``, ``metadata``,
            ...), ``token_dim``, ``num_mask_tokens``, ``num_rows``, ``num_parts``, ``parts`` (a list of
            ``{"file", "num_rows"}``), ``num_empty_images`` (images done with zero rows) and
            ``completed_images_per_shard`` (from the shards' manifests).

        Raises:
            StoreError: If an empty-image list or a manifest is corrupt.
        """
        num_empty_images = sum(len(read_empty_images(path)) for path in empty_images_paths(self.root))
        manifests = self.manifests()
        return {
            **self.metadata,
            "token_dim": self.token_dim,
            "num_mask_tokens": self.num_mask_tokens,
            "num_rows": self.num_rows,
            "num_parts": len(self._part_rows),
            "parts": [{"file": name, "num_rows": rows} for name, rows in self._part_rows.items()],
            "num_empty_images": num_empty_images,
            "completed_images_per_shard": {tag: manifest.completed_images for tag, manifest in manifests.items()},
        }

    @property
    def _description(self) -> str:
        return f"the store {self.root}"

    def _checked_columns(self, columns: Sequence[str]) -> list[str]:
        if isinstance(columns, str):
            columns = [columns]
        self.check_columns(columns)
        return list(columns)

    def _distinct_values(self, column: str) -> list[str]:
        if column not in self._distinct:
            values: set[str] = set()
            for table in self.iter_batches([column]):
                values.update(pc.unique(table.column(column)).to_pylist())
            self._distinct[column] = sorted(values)
        return list(self._distinct[column])


def open_store(root: str | Path) -> ds.Dataset:
    """The store's parts as a ``pyarrow.dataset.Dataset`` (``StoreReader(root).dataset``)."""
    return StoreReader(root).dataset


def read_table(root: str | Path, columns: Sequence[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
    """Reads (part of) a store into one table (``StoreReader(root).read(columns, filter)``)."""
    return StoreReader(root).read(columns, filter)


def store_info(root: str | Path) -> dict[str, Any]:
    """What a store holds (``StoreReader(root).info()``)."""
    return StoreReader(root).info()


def _listdir(root: Path) -> list[str]:
    with reading_errors(f"the store {root}"):
        return os.listdir(root)


def _find_unreadable_part(files: Iterable[str], columns: Sequence[str] | None) -> str | None:
    for file in files:
        try:
            pq.read_table(file, columns=None if columns is None else list(columns))
        except (OSError, pa.ArrowException):
            return file
    return None
