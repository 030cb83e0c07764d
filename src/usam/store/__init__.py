"""The token store: one Parquet row per (image, object, model), written by many processes, safe to kill.

An extraction job runs SAM2 over a dataset and records, per object and model, the decoder tokens, the scores and
the uncertainty targets that the heads are trained on. Read a store with :class:`StoreReader`; write one with
:class:`StoreWriter`.

Modules:
    schema: the row schema (:func:`row_schema`), its constants and versions, the signal columns, rows <-> Arrow
        tables, key columns and :func:`image_names`.
    layout: the files of a store directory (store file, parts, empty-image lists, shard manifests).
    writer: :class:`StoreWriter`, crash-safe sharded writing, and :func:`shard_of_key`.
    reader: :class:`StoreReader`, the one way to read a store.
"""

from usam.store.layout import STORE_FILE_NAME, ShardManifest
from usam.store.reader import StoreReader, open_store, read_table, reading_errors, store_info
from usam.store.schema import (
    FORMAT_NAME,
    KEY_COLUMNS,
    NUM_EXTRA_POINTS,
    NUM_MASK_OUTPUTS,
    NUM_MASK_TOKENS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SIGNAL_COLUMNS,
    TOKEN_DTYPES,
    TOKEN_SIZE,
    TokenDtype,
    image_names,
    row_schema,
    rows_to_table,
    token_arrays,
)
from usam.store.writer import StoreWriter, shard_of_key

__all__ = [
    "FORMAT_NAME",
    "KEY_COLUMNS",
    "NUM_EXTRA_POINTS",
    "NUM_MASK_OUTPUTS",
    "NUM_MASK_TOKENS",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "SIGNAL_COLUMNS",
    "STORE_FILE_NAME",
    "TOKEN_DTYPES",
    "TOKEN_SIZE",
    "ShardManifest",
    "StoreReader",
    "StoreWriter",
    "TokenDtype",
    "image_names",
    "open_store",
    "read_table",
    "reading_errors",
    "row_schema",
    "rows_to_table",
    "shard_of_key",
    "store_info",
    "token_arrays",
]
