"""The files of a store directory: their names, the store file, parts, empty-image lists and shard manifests.

Layout of a store directory::

    _usam_store.json                                        format, schema version, token type and sizes,
                                                            shard count, and the job's options and identity
    part-<shard:05d>-of-<num:05d>-<seq:06d>.parquet         committed rows, whole images only
    _empty-images-<shard:05d>-of-<num:05d>-<seq:06d>.json   images finished with zero rows
    _manifest-<shard:05d>-of-<num:05d>.json                 a readable summary of a shard (informational)
    .<final name>.usam-<host>-<pid>-<random>.tmp            files being written (:mod:`usam.files` naming)
    .lock-<shard:05d>-of-<num:05d>                          keeps a second writer off a running shard

Both the writer and the reader read the store through this module, so that the two agree on every name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from usam.errors import InvalidInputError, StoreError
from usam.store.schema import (
    FORMAT_NAME,
    NUM_MASK_TOKENS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    TOKEN_DTYPES,
    TOKEN_SIZE,
    row_schema,
)
from usam.validation import check_int

STORE_FILE_NAME = "_usam_store.json"

PART_PATTERN = re.compile(r"part-(\d{5,})-of-(\d{5,})-(\d{6,})\.parquet")
EMPTY_IMAGES_PATTERN = re.compile(r"_empty-images-(\d{5,})-of-(\d{5,})-(\d{6,})\.json")
MANIFEST_PATTERN = re.compile(r"_manifest-((\d{5,})-of-(\d{5,}))\.json")


def shard_tag(shard_index: int, num_shards: int) -> str:
    """The part of a file name that names a shard, e.g. ``00001-of-00004``."""
    return f"{shard_index:05d}-of-{num_shards:05d}"


def read_store_file(root: Path) -> dict[str, Any]:
    """The checked content of a store's ``_usam_store.json``.

    Raises:
        StoreError: If ``root`` is missing or not a store, the file is corrupt, or the store has a schema version
            usam does not read (:data:`usam.store.READABLE_SCHEMA_VERSIONS`) or an unknown token type.
    """
    if not root.is_dir():
        raise StoreError(f"The store {root} does not exist (or is not a directory); check the path.")
    path = root / STORE_FILE_NAME
    try:
        content = json.loads(path.read_bytes())
    except FileNotFoundError as error:
        raise StoreError(f"{root} is not a usam store: it has no {STORE_FILE_NAME}; check the path.") from error
    except (ValueError, OSError) as error:
        raise StoreError(f"{path} is corrupt ({error}); restore it, or extract anew into a new directory.") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT_NAME:
        raise StoreError(f"{path} is not a usam store file (format is not {FORMAT_NAME!r}); check the path.")
    if content.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise StoreError(
            f"The store {root} has schema version {content.get('schema_version')!r}, but this usam reads "
            f"versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))} and writes version {SCHEMA_VERSION}; "
            "use the usam version that wrote it, or extract anew into a new directory."
        )
    if content.get("token_dtype") not in TOKEN_DTYPES:
        raise StoreError(f"{path} has an unknown token_dtype {content.get('token_dtype')!r}.")
    for key in ("token_dim", "num_mask_tokens"):
        try:
            check_int(content.get(key), key, minimum=1, optional=True)
        except InvalidInputError as error:
            raise StoreError(f"{path} is corrupt: {error}; restore it, or extract anew.") from None
    return content


def schema_of_store_file(content: dict[str, Any]) -> pa.Schema:
    """The row schema a store file describes (stores written before usam recorded token sizes have SAM2's)."""
    return row_schema(
        content["token_dtype"],
        token_dim=content.get("token_dim", TOKEN_SIZE),
        num_mask_tokens=content.get("num_mask_tokens", NUM_MASK_TOKENS),
        schema_version=content["schema_version"],
    )


def part_paths(root: Path) -> list[Path]:
    """The committed part files of a store, sorted by name."""
    return [root / name for name in sorted(os.listdir(root)) if PART_PATTERN.fullmatch(name)]


def empty_images_paths(root: Path) -> list[Path]:
    """The empty-image lists of a store, sorted by name."""
    return [root / name for name in sorted(os.listdir(root)) if EMPTY_IMAGES_PATTERN.fullmatch(name)]


def check_part_footer(path: Path, schema: pa.Schema) -> int:
    """Reads a part's footer, checks its schema and returns its row count."""
    try:
        metadata = pq.read_metadata(path)
        part_schema = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as error:
        raise corrupt_part_error(path, error) from error
    check_part_schema(path, part_schema, schema)
    return metadata.num_rows


def check_part_schema(path: Path, part_schema: pa.Schema, schema: pa.Schema) -> None:
    """Refuses a part whose schema is not the store's."""
    if not part_schema.equals(schema):
        raise StoreError(
            f"The part {path} does not have the store's schema; it does not belong in this store: move it away."
        )


def part_image_keys(path: Path, schema: pa.Schema) -> set[str]:
    """The image keys of one part."""
    try:
        with pq.ParquetFile(path) as part:
            check_part_schema(path, part.schema_arrow, schema)
            keys = part.read(columns=["image_key"]).column("image_key")
    except (OSError, pa.ArrowException) as error:
        raise corrupt_part_error(path, error) from error
    return set(pc.unique(keys).to_pylist())


def corrupt_part_error(path: Path, error: BaseException) -> StoreError:
    """The error for a part that cannot be read, with what to do about it."""
    return StoreError(
        f"The part {path} is corrupt or truncated ({error}). Delete it (its images are extracted again on "
        "the next run) or restore a complete copy."
    )


def read_empty_images(path: Path) -> list[str]:
    """The image keys of one empty-image list."""
    try:
        keys = json.loads(path.read_bytes())["image_keys"]
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise ValueError("image_keys is not a list of strings")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise StoreError(
            f"{path} is corrupt ({error}). Delete it (its images, which have no rows, are processed again on "
            "the next run)."
        ) from error
    return keys


@dataclasses.dataclass(frozen=True)
class ShardManifest:
    """What one shard's manifest (``_manifest-<shard>.json``) says the shard has done.

    The manifest is a summary for people; a rerun trusts the parts and empty-image lists themselves.

    Attributes:
        file: The manifest's file name.
        shard_index: The shard.
        num_shards: Shards of the job.
        completed_images: Number of images the shard has finished.
        parts: The shard's part files when the manifest was written.
        image_keys: The finished images' keys.
    """

    file: str
    shard_index: int
    num_shards: int
    completed_images: int
    parts: tuple[str, ...]
    image_keys: tuple[str, ...]


def manifest_content(shard_index: int, num_shards: int, parts: list[str], image_keys: list[str]) -> dict[str, Any]:
    """The JSON content of a shard manifest (the writer writes it, :func:`read_manifest` reads it)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "completed_images": len(image_keys),
        "parts": sorted(parts),
        "image_keys": sorted(image_keys),
    }


def read_manifest(path: Path) -> ShardManifest:
    """Reads and checks one shard manifest.

    Raises:
        StoreError: If the file cannot be read or is not a manifest, naming the file and what to do.
    """
    try:
        content = json.loads(path.read_bytes())
        if not isinstance(content, dict):
            raise ValueError("it is not a JSON object")
        counts = [check_int(content.get(key), key) for key in ("shard_index", "num_shards", "completed_images")]
        lists = [content.get(key, []) for key in ("parts", "image_keys")]
        if not all(isinstance(value, list) and all(isinstance(item, str) for item in value) for value in lists):
            raise ValueError("parts or image_keys is not a list of strings")
    except (OSError, ValueError) as error:  # InvalidInputError is a ValueError
        raise StoreError(
            f"The manifest {path} is corrupt or malformed ({error}); delete it (it is only a summary: the next "
            "run of its shard writes it again)."
        ) from error
    shard_index, num_shards, completed_images = counts
    return ShardManifest(path.name, shard_index, num_shards, completed_images, tuple(lists[0]), tuple(lists[1]))
