"""The token store: one Parquet row per (image, object, model), written by many processes, safe to kill.

An extraction job runs SAM2 over a dataset and records, per object and model, the decoder tokens, the
scores and the uncertainty targets that the heads are trained on. The job is split into shards (one per GPU
or array task) that all write into one store directory without talking to each other, and any process can
be killed at any moment: rerunning the same command finishes the job with every row present exactly once.

Layout of a store directory::

    _usam_store.json                                    format, schema version, token dtype, shard count,
                                                        and the job options (dataset, split, models, ...)
    part-<shard:05d>-of-<num:05d>-<seq:06d>.parquet     committed rows, whole images only
    _empty-images-<shard:05d>-of-<num:05d>-<seq:06d>.json   images finished with zero rows
    .tmp-<shard:05d>-of-<num:05d>-...                   files being written (deleted on the next start)
    .lock-<shard:05d>-of-<num:05d>                      keeps a second writer off a running shard

``pyarrow.dataset.dataset(root)`` reads the whole store: it ignores names starting with ``.`` or ``_``, so it
sees only the part files, which all have the schema of :func:`row_schema`.

Crash safety rests on three rules:

* A part is written under a temporary name, flushed to disk, and then given its final name in one atomic
  step that never overwrites (``os.link``, or ``os.replace`` after an existence check where the file system
  has no hard links). A part file either holds all of its rows or does not exist under a part name.
* An image's rows never span two parts. So an image is complete exactly when its key occurs in a
  committed part, and the parts themselves are the record of what is done: no separately updated
  manifest can disagree with them.
* Images with zero rows cannot appear in a part; they are listed in an ``_empty-images-*.json`` file,
  written atomically after the part of the same flush. If a kill falls between the two files, those
  images are processed again on the rerun, which yields zero rows again: nothing is lost or duplicated.

On start a writer takes its shard's lock, deletes its shard's leftover temporary files, and reads the
image keys of its shard's parts; :meth:`StoreWriter.completed_keys` returns them so that the caller skips
those images.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from usam.errors import InvalidInputError, StoreError

try:  # POSIX only; elsewhere the no-overwrite commit is the only guard against a doubly started shard.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the row schema; a store written with another version is refused."""
FORMAT_NAME = "usam-token-store"

TOKEN_SIZE = 256
"""Width of one SAM2 decoder token (the transformer dimension)."""
NUM_MASK_TOKENS = 4
"""SAM2's decoder has four mask tokens: the single-mask token and three multimask tokens."""
NUM_MASK_OUTPUTS = 3
"""Scores are recorded for the three masks of a multimask call."""
NUM_EXTRA_POINTS = 7
"""Extra positive clicks sampled per object besides its center point (the dense prompt uses all eight)."""
TOKEN_DTYPES: tuple[str, ...] = ("float32", "float16")

STORE_FILE_NAME = "_usam_store.json"
_SCHEMA_VERSION_KEY = b"usam.schema_version"

_PART_PATTERN = re.compile(r"part-(\d{5,})-of-(\d{5,})-(\d{6,})\.parquet")
_EMPTY_IMAGES_PATTERN = re.compile(r"_empty-images-(\d{5,})-of-(\d{5,})-(\d{6,})\.json")
_NO_HARD_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


def row_schema(token_dtype: str = "float32") -> pa.Schema:
    """The schema of a store row; the single source of the store's column list.

    Vector columns are fixed-size lists. ``extra_points`` holds 7 points as ``(x, y)`` pairs and the
    ``*mask_tokens`` columns hold 4 tokens of 256 values, both flattened row-major. ``model_gap`` is null
    when the job's model list lacks the tiny or the large model; the ``h_*`` columns are null when the
    Monte Carlo part of the extraction was skipped.

    Args:
        token_dtype: ``"float32"`` or ``"float16"``, the value type of the token columns. Scores, points
            and targets are float32 either way.

    Returns:
        The Arrow schema, with the schema version in its metadata.

    Raises:
        InvalidInputError: If ``token_dtype`` is not one of :data:`TOKEN_DTYPES`.
    """
    token_type = _token_value_type(token_dtype)
    float32 = pa.float32()

    def vector(name: str, value_type: pa.DataType, size: int) -> pa.Field:
        # The child is named "element" because that is what Parquet's compliant nested types read back
        # as; naming it so here makes the schema of a written and re-read part equal to this one.
        return pa.field(name, pa.list_(pa.field("element", value_type), size), nullable=False)

    fields = [
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("object_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("object_area", pa.int64(), nullable=False),
        vector("center_point", float32, 2),
        vector("extra_points", float32, 2 * NUM_EXTRA_POINTS),
        vector("iou_token", token_type, TOKEN_SIZE),
        vector("mask_tokens", token_type, NUM_MASK_TOKENS * TOKEN_SIZE),
        vector("sam_scores", float32, NUM_MASK_OUTPUTS),
        vector("mask_ious", float32, NUM_MASK_OUTPUTS),
        vector("dense_sam_scores", float32, NUM_MASK_OUTPUTS),
        vector("dense_mask_ious", float32, NUM_MASK_OUTPUTS),
        vector("dense_iou_token", token_type, TOKEN_SIZE),
        vector("dense_mask_tokens", token_type, NUM_MASK_TOKENS * TOKEN_SIZE),
        pa.field("iou", float32, nullable=False),
        pa.field("unsupervised_iou", float32, nullable=False),
        pa.field("iou_dense_prompt", float32, nullable=False),
    ]
    fields += [pa.field(name, float32, nullable=True) for name in ("model_gap", "prompt_gap", "task_gap")]
    entropy_names = ("h_std", "h_theta", "h_prompt", "h_augmentation", "h_task", "h_all")
    entropy_names += tuple(f"{name}_sam_pick" for name in entropy_names if name not in ("h_task", "h_all"))
    entropy_names += ("h_all_sam_pick",)
    fields += [pa.field(name, float32, nullable=True) for name in entropy_names]
    return pa.schema(fields, metadata={_SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()})


def shard_of_key(image_key: str, num_shards: int) -> int:
    """The shard that handles an image: a hash of its key that is the same in every process and run.

    Python's ``hash`` is salted per process, so it would send an image to different shards on a rerun.

    Args:
        image_key: The image's key.
        num_shards: Number of shards of the job.

    Returns:
        An index in ``range(num_shards)``.
    """
    digest = hashlib.blake2b(image_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def rows_to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Validates rows and converts them to a table, column by column.

    Vector values may be lists, numpy arrays or CPU tensors of any shape with the right number of values;
    they are flattened row-major (so ``mask_tokens`` may be given as ``(4, 256)``) and cast to the column's
    type. Scalars may be Python or numpy numbers or 0-d arrays; ``None`` is allowed in nullable columns only.

    Args:
        rows: One mapping per row with exactly the schema's column names as keys.
        schema: The target schema, normally :func:`row_schema`.

    Returns:
        A table with ``schema``.

    Raises:
        StoreError: If a row lacks a column or has an unknown one, a vector has the wrong number of values,
            a value does not convert to its column's type, or a non-nullable column gets ``None``.
    """
    names = schema.names
    expected = set(names)
    for index, row in enumerate(rows):
        if row.keys() != expected:
            missing = sorted(expected - row.keys())
            unknown = sorted(row.keys() - expected)
            problem = f"lacks column {missing[0]!r}" if missing else f"has unknown column {unknown[0]!r}"
            raise StoreError(
                f"Row {index} {problem}; a store row needs exactly the columns of usam.store.row_schema()."
            )
    arrays = [_column_array(field, [row[field.name] for row in rows]) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def token_arrays(table: pa.Table, column: str, dtype: npt.DTypeLike | None = None) -> np.ndarray:
    """A fixed-size-list column of a table as one numpy array, without a Python loop over rows.

    The result has shape ``(N, k)``, or ``(N, 4, 256)`` for the ``*mask_tokens`` columns. It shares memory
    with the table (and is then read-only) when the column is one chunk without nulls and no cast is asked
    for; a table read from several parts is one copy. float16 tokens stay float16 unless ``dtype`` says
    otherwise.

    Args:
        table: A table with the column, e.g. from :func:`read_table`.
        column: Name of a fixed-size-list column, e.g. ``"iou_token"``.
        dtype: Optional numpy dtype to cast to, e.g. ``np.float32`` to upcast float16 tokens.

    Returns:
        The column's values as an ``(N, k)`` or ``(N, 4, 256)`` array.

    Raises:
        StoreError: If the table lacks the column, the column is not a fixed-size list, or it has null rows.
    """
    if column not in table.column_names:
        raise StoreError(
            f"The table has no column {column!r} (it has {', '.join(table.column_names)}); "
            "include it in the columns you read."
        )
    chunked = table.column(column)
    if not pa.types.is_fixed_size_list(chunked.type):
        raise StoreError(f"Column {column!r} has type {chunked.type}, not a fixed-size list of values.")
    if chunked.null_count:
        raise StoreError(f"Column {column!r} has {chunked.null_count} null rows; filter them out first.")
    size = chunked.type.list_size
    # combine_chunks copies even a single chunk, so a one-chunk column is taken as it is.
    array = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    # flatten(), unlike .values, honours the offset of a sliced array.
    values = array.flatten().to_numpy(zero_copy_only=False)
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    if size == NUM_MASK_TOKENS * TOKEN_SIZE:
        return values.reshape(len(array), NUM_MASK_TOKENS, TOKEN_SIZE)
    return values.reshape(len(array), size)


class StoreWriter:
    """Writes the rows of one shard into a store directory, safely against kills at any moment.

    Typical use::

        with StoreWriter(out, shard_index=i, num_shards=n, metadata=options) as writer:
            done = writer.completed_keys()
            for image_key in my_image_keys:
                if image_key not in done:
                    writer.add_image(image_key, extract_rows(image_key))

    Images are buffered and written as one part when ``rows_per_part`` rows or images are buffered, and on
    :meth:`flush` / :meth:`close`. An image counts as complete once its part is written.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        shard_index: int = 0,
        num_shards: int = 1,
        token_dtype: str = "float32",
        metadata: Mapping[str, Any] | None = None,
        rows_per_part: int = 2048,
    ) -> None:
        """Opens or creates the store and reads which images this shard has completed.

        Args:
            root: The store directory; created if missing.
            shard_index: This process's shard, in ``range(num_shards)``.
            num_shards: Number of shards of the job; must be the same in every run into this store.
            token_dtype: ``"float32"`` or ``"float16"``; must match the store.
            metadata: JSON-serializable options that determine the rows (dataset, split, models, seed,
                Monte Carlo flag, ...). Every run into the store must pass the same; ``None`` means ``{}``.
            rows_per_part: Buffered rows (or images) that trigger writing a part.

        Raises:
            InvalidInputError: If an argument is out of range or ``metadata`` is not JSON-serializable.
            StoreError: If ``root`` is a non-empty directory that is not a store, the store was written with
                other options, another process is writing this shard, or one of this shard's files is
                corrupt.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidInputError(
                f"Shard {shard_index} of {num_shards} does not exist; the shard index must be in "
                f"0..{num_shards - 1} and the number of shards at least 1."
            )
        if rows_per_part < 1:
            raise InvalidInputError(f"rows_per_part must be at least 1, got {rows_per_part}.")
        self.root = Path(root)
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.token_dtype = token_dtype
        self.schema = row_schema(token_dtype)
        self.rows_per_part = rows_per_part
        self.metadata = _json_normalized(dict(metadata or {}))
        self._shard_tag = f"{shard_index:05d}-of-{num_shards:05d}"
        self._buffer: list[tuple[str, pa.Table | None]] = []
        self._buffered_keys: set[str] = set()
        self._buffered_rows = 0
        self._closed = False
        self._lock_fd: int | None = None

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"Cannot create the store directory {self.root}: {error}.") from error
        self._lock_shard()
        try:
            self._delete_own_temp_files()
            _ensure_store_file(self.root, self._store_file_content(), self._temp_path("store.json"))
            self._completed, self._next_seq = self._scan_own_files()
        except BaseException:
            self._unlock_shard()
            raise

    def completed_keys(self) -> set[str]:
        """Image keys this shard has fully written, read from its committed parts and empty-image lists.

        Returns:
            A new set; images still buffered are not in it.
        """
        return set(self._completed)

    def add_image(self, image_key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Buffers all rows of one image; writes a part if enough rows or images are buffered.

        Args:
            image_key: The image's key; every row's ``image_key`` must equal it.
            rows: All rows of the image, possibly none (the image is then still recorded as done).

        Raises:
            StoreError: If the writer is closed, the image is already written or buffered, a row is invalid,
                two rows share an (object, model) pair, or writing a part fails.
        """
        self._check_open()
        if image_key in self._completed or image_key in self._buffered_keys:
            raise StoreError(
                f"Image {image_key!r} is already in the store {self.root} (shard {self._shard_tag}); "
                "skip the keys in completed_keys() so that no row is written twice."
            )
        table = None
        if rows:
            try:
                table = rows_to_table(rows, self.schema)
            except StoreError as error:
                raise StoreError(f"Image {image_key!r}: {error}") from error
            _check_rows_of_image(image_key, table)
        self._buffer.append((image_key, table))
        self._buffered_keys.add(image_key)
        self._buffered_rows += len(rows)
        if self._buffered_rows >= self.rows_per_part or len(self._buffer) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered images as one part (and their empty images as one list), then clears them.

        Raises:
            StoreError: If a file cannot be written, e.g. because the disk is full. The images stay buffered
                unless their part was committed.
        """
        self._check_open()
        if not self._buffer:
            return
        seq = self._next_seq
        tables = [table for _, table in self._buffer if table is not None]
        empty_keys = [key for key, table in self._buffer if table is None]
        if tables:
            self._write_part(pa.concat_tables(tables), seq)
            # From here on the rows are committed: a failure below must not leave them buffered for a
            # second write.
            self._completed.update(key for key, table in self._buffer if table is not None)
        self._next_seq = seq + 1
        self._buffer, self._buffered_keys, self._buffered_rows = [], set(), 0
        if empty_keys:
            self._write_empty_images(empty_keys, seq)
            self._completed.update(empty_keys)
        self._write_manifest()

    @property
    def manifest_path(self) -> Path:
        """This shard's manifest: a readable summary of what it has done, rewritten after every part."""
        return self.root / f"_manifest-{self._shard_tag}.json"

    def _write_manifest(self) -> None:
        # Informational: the parts (and empty-image lists) stay the record a rerun trusts, so a kill between
        # a part and this file loses nothing; the next flush or run writes it again.
        content = {
            "schema_version": SCHEMA_VERSION,
            "shard_index": self.shard_index,
            "num_shards": self.num_shards,
            "completed_images": len(self._completed),
            "parts": sorted(path.name for path in self.root.glob(f"part-{self._shard_tag}-*.parquet")),
            "image_keys": sorted(self._completed),
        }
        temporary = self._temp_path("manifest.json")
        try:
            temporary.write_text(json.dumps(content))
            os.replace(temporary, self.manifest_path)
        except OSError as error:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            logger.warning("could not write %s (%s); the store itself is complete", self.manifest_path, error)

    def close(self) -> None:
        """Writes the buffered images and releases the shard. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._unlock_shard()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # Buffered images are complete (add_image takes whole images), so they are worth keeping; but a
        # failure to write them must not hide the exception that ended the block.
        try:
            self.close()
        except Exception:
            logger.exception("Could not write the buffered images to %s while handling an error", self.root)

    # Internals -----------------------------------------------------------------------------------------

    def _store_file_content(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "token_dtype": self.token_dtype,
            "num_shards": self.num_shards,
            "metadata": self.metadata,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"The writer for {self.root} (shard {self._shard_tag}) is closed.")

    def _temp_path(self, suffix: str) -> Path:
        # Temp names carry the shard so that a restarted shard deletes its own leftovers and nobody else's.
        return self.root / f".tmp-{self._shard_tag}-{uuid.uuid4().hex[:12]}-{suffix}"

    def _lock_shard(self) -> None:
        if fcntl is None:
            return
        path = self.root / f".lock-{self._shard_tag}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreError(f"Cannot create {path}: {error}; check the permissions of {self.root}.") from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(
                    f"Another process is writing shard {self._shard_tag} of the store {self.root}; run each "
                    "shard once at a time (wait for it to end or stop it, then rerun)."
                ) from error
            # File systems without flock (some network mounts): the no-overwrite commit still refuses a
            # part that another writer of this shard already wrote.
            logger.debug("No lock on %s: %s", path, error)
            return
        self._lock_fd = fd

    def _unlock_shard(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _delete_own_temp_files(self) -> None:
        prefix = f".tmp-{self._shard_tag}-"
        for entry in os.scandir(self.root):
            if entry.name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _scan_own_files(self) -> tuple[set[str], int]:
        completed: set[str] = set()
        last_seq = -1
        for entry in sorted(os.scandir(self.root), key=lambda entry: entry.name):
            match = _PART_PATTERN.fullmatch(entry.name) or _EMPTY_IMAGES_PATTERN.fullmatch(entry.name)
            if match is None:
                continue
            shard, num, seq = (int(group) for group in match.groups())
            if num != self.num_shards:
                raise StoreError(
                    f"{entry.path} was written by a job with {num} shards, but this one has "
                    f"{self.num_shards}; a store keeps its shard count: rerun with {num} shards or use a new "
                    "--out."
                )
            if shard != self.shard_index:
                continue
            last_seq = max(last_seq, seq)
            path = Path(entry.path)
            if entry.name.endswith(".parquet"):
                completed.update(_part_image_keys(path, self.schema))
            else:
                completed.update(_read_empty_images(path))
        return completed, last_seq + 1

    def _write_part(self, table: pa.Table, seq: int) -> None:
        final_path = self.root / f"part-{self._shard_tag}-{seq:06d}.parquet"
        temp_path = self._temp_path("part.parquet")
        try:
            pq.write_table(
                table,
                temp_path,
                compression="zstd",
                # Dictionaries pay off for the repetitive strings only, and statistics (for filter pushdown)
                # for the scalar columns; on the token columns both cost time for nothing.
                use_dictionary=[field.name for field in self.schema if pa.types.is_string(field.type)],
                write_statistics=[field.name for field in self.schema if not pa.types.is_fixed_size_list(field.type)],
            )
            _fsync_file(temp_path)
            _commit_without_overwrite(temp_path, final_path)
        except pa.ArrowNotImplementedError as error:
            raise StoreError(
                f"Cannot write {final_path}: {error}. This pyarrow cannot write this schema to Parquet "
                f"(float16 tokens need a recent one, pyarrow {pa.__version__} is installed): upgrade pyarrow "
                "or use float32 tokens."
            ) from error
        except (OSError, pa.ArrowException) as error:
            raise StoreError(
                f"Cannot write the part {final_path}: {error}. Fix the cause (disk space, permissions) and "
                "rerun the same command; images already written are kept."
            ) from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
        _fsync_directory(self.root)

    def _write_empty_images(self, image_keys: list[str], seq: int) -> None:
        final_path = self.root / f"_empty-images-{self._shard_tag}-{seq:06d}.json"
        content = {"schema_version": SCHEMA_VERSION, "image_keys": image_keys}
        try:
            _write_file_atomically(final_path, json.dumps(content).encode(), self._temp_path("empty.json"))
        except OSError as error:
            raise StoreError(
                f"Cannot write {final_path}: {error}. Fix the cause (disk space, permissions) and rerun the "
                f"same command; the {len(image_keys)} images without rows in it will be processed again."
            ) from error


@contextlib.contextmanager
def reading_errors(description: str) -> Iterator[None]:
    """Turn I/O and Arrow errors raised while reading a store into a :class:`StoreError` naming ``description``."""
    try:
        yield
    except (OSError, pa.ArrowException) as error:
        raise StoreError(
            f"cannot read {description}: {error}. Check the store (usam.store.store_info) and delete or restore "
            "a corrupt part"
        ) from error


def open_store(root: str | Path) -> ds.Dataset:
    """Opens a store for reading, checking its format, schema version and every part's footer.

    Args:
        root: The store directory.

    Returns:
        A dataset over the store's part files with the schema of :func:`row_schema`.

    Raises:
        StoreError: If ``root`` is missing or not a store, was written with another schema version, or a
            part is corrupt, truncated or has another schema.
    """
    root = Path(root)
    info = _read_store_file(root)
    schema = row_schema(info["token_dtype"])
    paths = _part_paths(root)
    for path in paths:
        _check_part_footer(path, schema)
    return ds.dataset([str(path) for path in paths], schema=schema, format="parquet")


def store_info(root: str | Path) -> dict[str, Any]:
    """What a store holds: its ``_usam_store.json`` content plus row and part counts.

    Args:
        root: The store directory.

    Returns:
        The store file's fields (``format``, ``schema_version``, ``token_dtype``, ``num_shards``,
        ``metadata``) and ``num_rows``, ``num_parts``, ``parts`` (a list of ``{"file", "num_rows"}``) and
        ``num_empty_images`` (images recorded as done with zero rows).

    Raises:
        StoreError: As :func:`open_store`.
    """
    root = Path(root)
    info = _read_store_file(root)
    schema = row_schema(info["token_dtype"])
    parts = [{"file": path.name, "num_rows": _check_part_footer(path, schema)} for path in _part_paths(root)]
    num_empty_images = sum(
        len(_read_empty_images(root / name))
        for name in sorted(os.listdir(root))
        if _EMPTY_IMAGES_PATTERN.fullmatch(name)
    )
    return {
        **info,
        "num_rows": sum(part["num_rows"] for part in parts),
        "num_parts": len(parts),
        "parts": parts,
        "num_empty_images": num_empty_images,
    }


def read_table(root: str | Path, columns: Sequence[str] | None = None, filter: ds.Expression | None = None) -> pa.Table:
    """Reads (part of) a store into one table.

    Args:
        root: The store directory.
        columns: Columns to read; all by default.
        filter: Optional row filter, e.g. ``pyarrow.compute.field("model") == "sam2.1-tiny"``.

    Returns:
        The rows, in no guaranteed order.

    Raises:
        StoreError: As :func:`open_store`, or if a part cannot be decoded.
    """
    dataset = open_store(root)
    try:
        return dataset.to_table(columns=None if columns is None else list(columns), filter=filter)
    except (OSError, pa.ArrowException) as error:
        bad_part = _find_unreadable_part(dataset.files, columns)
        where = f"The part {bad_part}" if bad_part else f"A part of {root}"
        raise StoreError(
            f"{where} cannot be read: {error}. Delete that part (its images are extracted again on the next "
            "run) or restore a complete copy."
        ) from error


# Helpers -------------------------------------------------------------------------------------------------


def _token_value_type(token_dtype: str) -> pa.DataType:
    if token_dtype not in TOKEN_DTYPES:
        raise InvalidInputError(f"token_dtype must be one of {', '.join(TOKEN_DTYPES)}, got {token_dtype!r}.")
    return pa.float16() if token_dtype == "float16" else pa.float32()


def _column_array(field: pa.Field, values: list[Any]) -> pa.Array:
    """Converts one column's values to an Arrow array, naming the column in every error."""
    if pa.types.is_fixed_size_list(field.type):
        return _vector_array(field, values)
    scalars = [_python_scalar(value) for value in values]
    if pa.types.is_integer(field.type):
        # pyarrow truncates 3.5 to 3 without a word; a fractional size is a bug worth reporting.
        fractional = [index for index, value in enumerate(scalars) if isinstance(value, float)]
        if fractional and not all(scalars[index].is_integer() for index in fractional):
            raise StoreError(f"Column {field.name!r} needs whole numbers, got {scalars[fractional[0]]!r}.")
    try:
        array = pa.array(scalars, type=field.type)
    except (pa.ArrowException, TypeError, ValueError) as error:
        raise StoreError(f"Column {field.name!r}: a value does not convert to {field.type}: {error}") from error
    if not field.nullable and array.null_count:
        first_null = [value is None for value in values].index(True)
        raise StoreError(f"Column {field.name!r} may not be None (row {first_null}).")
    return array


def _vector_array(field: pa.Field, values: list[Any]) -> pa.Array:
    size = field.type.list_size
    value_type = field.type.value_type
    numpy_dtype = value_type.to_pandas_dtype()
    flat_rows = []
    for index, value in enumerate(values):
        if value is None:
            raise StoreError(f"Column {field.name!r} may not be None (row {index}).")
        try:
            flat = np.asarray(value, dtype=numpy_dtype).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as error:
            raise StoreError(
                f"Column {field.name!r} (row {index}): cannot convert the value to {numpy_dtype.__name__}: {error}"
            ) from error
        if flat.size != size:
            raise StoreError(
                f"Column {field.name!r} (row {index}) needs {size} values, got {flat.size} (shape {np.shape(value)})."
            )
        flat_rows.append(flat)
    flat_values = np.concatenate(flat_rows) if flat_rows else np.empty(0, dtype=numpy_dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat_values, type=value_type), type=field.type)


def _python_scalar(value: Any) -> Any:
    # numpy scalars, 0-d arrays and 0-d tensors all have .item(); pyarrow wants plain Python values.
    if value is None or isinstance(value, (str, bytes)):
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _check_rows_of_image(image_key: str, table: pa.Table) -> None:
    keys = table.column("image_key").to_pylist()
    if any(key != image_key for key in keys):
        other = next(key for key in keys if key != image_key)
        raise StoreError(f"Image {image_key!r}: a row has image_key {other!r}; pass each image's rows alone.")
    pairs = list(zip(table.column("object_id").to_pylist(), table.column("model").to_pylist(), strict=True))
    if len(set(pairs)) != len(pairs):
        object_id, model = next(pair for pair in pairs if pairs.count(pair) > 1)
        raise StoreError(
            f"Image {image_key!r} has two rows for object {object_id!r} and model {model!r}; a store holds "
            "one row per (image, object, model)."
        )


def _json_normalized(metadata: dict[str, Any]) -> dict[str, Any]:
    # Round-tripping through JSON makes tuples lists etc., so that the comparison with a stored store file
    # compares like with like.
    try:
        return json.loads(json.dumps(metadata, sort_keys=True))
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"Store metadata must be JSON-serializable: {error}") from error


def _ensure_store_file(root: Path, content: dict[str, Any], temp_path: Path) -> None:
    """Creates ``_usam_store.json`` if missing (exactly one of racing creators wins) and checks it matches."""
    path = root / STORE_FILE_NAME
    if not path.exists():
        foreign = sorted(
            name for name in os.listdir(root) if not name.startswith((".", "_")) and not _PART_PATTERN.fullmatch(name)
        )
        if foreign:
            raise StoreError(
                f"{root} is not empty ({foreign[0]!r}, ...) and is not a usam store (no {STORE_FILE_NAME}); "
                "choose a new or empty --out directory."
            )
        data = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
        try:
            _write_file_atomically(path, data, temp_path)
        except FileExistsError:
            pass  # another shard created it first; it is compared below like any existing one
        except OSError as error:
            raise StoreError(f"Cannot create {path}: {error}.") from error
    existing = _read_store_file(root)
    _compare_store_files(path, existing, content)


def _compare_store_files(path: Path, existing: dict[str, Any], wanted: dict[str, Any]) -> None:
    advice = "use a new --out directory, or the same options as the run that created it"
    for field in ("schema_version", "token_dtype", "num_shards"):
        if existing.get(field) != wanted[field]:
            raise StoreError(
                f"The store {path.parent} has {field} {existing.get(field)!r} in {path.name}, but this run "
                f"has {wanted[field]!r}; {advice}."
            )
    stored, given = existing.get("metadata", {}), wanted["metadata"]
    for key in sorted(stored.keys() | given.keys()):
        if stored.get(key) != given.get(key):
            raise StoreError(
                f"The store {path.parent} was written with {key}={stored.get(key)!r} ({path.name}), but this "
                f"run has {key}={given.get(key)!r}; {advice}."
            )


def _read_store_file(root: Path) -> dict[str, Any]:
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
    if content.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(
            f"The store {root} has schema version {content.get('schema_version')!r}, but this usam reads "
            f"and writes version {SCHEMA_VERSION}; use the usam version that wrote it, or extract anew "
            "into a new directory."
        )
    if content.get("token_dtype") not in TOKEN_DTYPES:
        raise StoreError(f"{path} has an unknown token_dtype {content.get('token_dtype')!r}.")
    return content


def _part_paths(root: Path) -> list[Path]:
    return [root / name for name in sorted(os.listdir(root)) if _PART_PATTERN.fullmatch(name)]


def _check_part_footer(path: Path, schema: pa.Schema) -> int:
    """Reads a part's footer, checks its schema and returns its row count."""
    try:
        metadata = pq.read_metadata(path)
        part_schema = metadata.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as error:
        raise _corrupt_part_error(path, error) from error
    _check_part_schema(path, part_schema, schema)
    return metadata.num_rows


def _check_part_schema(path: Path, part_schema: pa.Schema, schema: pa.Schema) -> None:
    if not part_schema.equals(schema):
        raise StoreError(
            f"The part {path} does not have the store's schema (schema version {SCHEMA_VERSION}); it "
            "does not belong in this store: move it away."
        )


def _part_image_keys(path: Path, schema: pa.Schema) -> set[str]:
    try:
        with pq.ParquetFile(path) as part:
            _check_part_schema(path, part.schema_arrow, schema)
            keys = part.read(columns=["image_key"]).column("image_key")
    except (OSError, pa.ArrowException) as error:
        raise _corrupt_part_error(path, error) from error
    return set(pc.unique(keys).to_pylist())


def _corrupt_part_error(path: Path, error: BaseException) -> StoreError:
    return StoreError(
        f"The part {path} is corrupt or truncated ({error}). Delete it (its images are extracted again on "
        "the next run) or restore a complete copy."
    )


def _read_empty_images(path: Path) -> list[str]:
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


def _find_unreadable_part(files: Iterable[str], columns: Sequence[str] | None) -> str | None:
    for file in files:
        try:
            pq.read_table(file, columns=None if columns is None else list(columns))
        except (OSError, pa.ArrowException):
            return file
    return None


def _write_file_atomically(path: Path, data: bytes, temp_path: Path) -> None:
    """Writes ``path`` so that it appears complete or not at all; raises FileExistsError if it exists."""
    try:
        with open(temp_path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        _commit_without_overwrite(temp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
    _fsync_directory(path.parent)


def _commit_without_overwrite(temp_path: Path, final_path: Path) -> None:
    """Gives a complete temporary file its final name in one atomic step; never replaces an existing file.

    A hard link is atomic and fails if the name exists, so two writers can never overwrite each other's
    file. The caller removes the temporary name afterwards (a kill in between leaves only a temp file).
    """
    try:
        os.link(temp_path, final_path)
    except FileExistsError:
        if final_path.name == STORE_FILE_NAME:
            raise
        raise StoreError(
            f"{final_path} already exists: another process is writing the same shard into this store. Run "
            "each shard once at a time, then rerun the same command."
        ) from None
    except OSError as error:
        if error.errno not in _NO_HARD_LINK_ERRNOS:
            raise
        # No hard links on this file system: fall back to a rename, which is atomic but would overwrite,
        # hence the check first (the shard lock keeps other writers of this shard away).
        if final_path.exists():
            if final_path.name == STORE_FILE_NAME:
                raise FileExistsError(final_path) from error
            raise StoreError(f"{final_path} already exists: another process is writing the same shard.") from error
        os.replace(temp_path, final_path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    # Makes a new name durable against power loss; a kill of the process alone cannot lose it. Not all
    # platforms can open a directory, and there it is skipped.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
