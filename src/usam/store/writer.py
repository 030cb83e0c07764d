"""Writing a token store: many processes, one directory, safe to kill at any moment.

An extraction job is split into shards (one per GPU or array task) that all write into one store directory
without talking to each other, and any process can be killed at any moment: rerunning the same command finishes
the job with every row present exactly once. The file names are those of :mod:`usam.store.layout`.

``pyarrow.dataset.dataset(root)`` reads the whole store: it ignores names starting with ``.`` or ``_``, so it
sees only the part files, which all have the schema of :func:`usam.store.row_schema`.

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

On start a writer takes its shard's lock, deletes leftover temporary files, and reads the image keys of its
shard's parts; :meth:`StoreWriter.completed_keys` returns them so that the caller skips those images.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from usam.errors import InvalidInputError, StoreError, UsamWarning
from usam.files import (
    TEMPORARY_SUFFIX,
    default_file_mode,
    json_text,
    remove_stale_temporaries,
    temporary_prefix,
    write_json_atomically,
)
from usam.store.layout import (
    EMPTY_IMAGES_PATTERN,
    PART_PATTERN,
    STORE_FILE_NAME,
    manifest_content,
    part_image_keys,
    read_empty_images,
    read_store_file,
    shard_tag,
)
from usam.store.schema import (
    FORMAT_NAME,
    NUM_MASK_TOKENS,
    SCHEMA_VERSION,
    TOKEN_SIZE,
    TokenDtype,
    row_schema,
    rows_to_table,
)
from usam.validation import check_int

try:  # POSIX only; elsewhere the no-overwrite commit is the only guard against a doubly started shard.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

_NO_HARD_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


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
        token_dtype: TokenDtype | str = TokenDtype.FLOAT32,
        token_dim: int = TOKEN_SIZE,
        num_mask_tokens: int = NUM_MASK_TOKENS,
        metadata: Mapping[str, Any] | None = None,
        rows_per_part: int = 2048,
        unchecked_if_missing: Collection[str] = (),
    ) -> None:
        """Opens or creates the store and reads which images this shard has completed.

        Args:
            root: The store directory; created if missing.
            shard_index: This process's shard, in ``range(num_shards)``.
            num_shards: Number of shards of the job; must be the same in every run into this store.
            token_dtype: ``"float32"`` or ``"float16"``; must match the store.
            token_dim: Values per decoder token (the model's, :func:`usam.sam2_adapter.token_dim_of`); must
                match the store.
            num_mask_tokens: Mask tokens per row (the model's); must match the store.
            metadata: JSON-serializable options that determine the rows (dataset, split, models, seed,
                Monte Carlo flag, ...). Every run into the store must pass the same; ``None`` means ``{}``.
            rows_per_part: Buffered rows (or images) that trigger writing a part.
            unchecked_if_missing: Keys of ``metadata`` that a store written by an older usam may lack. Such a
                store is opened with one :class:`~usam.errors.UsamWarning` naming them (they cannot be
                checked); every key it does record must still match.

        Raises:
            InvalidInputError: If an argument is out of range or ``metadata`` is not JSON-serializable.
            StoreError: If ``root`` is a non-empty directory that is not a store, the store was written with
                other options, another process is writing this shard, or one of this shard's files is
                corrupt.
        """
        check_int(num_shards, "num_shards")
        check_int(shard_index, "shard_index")
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidInputError(
                f"Shard {shard_index} of {num_shards} does not exist; the shard index must be in "
                f"0..{num_shards - 1} and the number of shards at least 1."
            )
        self.root = Path(root)
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.schema = row_schema(token_dtype, token_dim=token_dim, num_mask_tokens=num_mask_tokens)
        self.token_dtype = TokenDtype(token_dtype)
        self.token_dim = token_dim
        self.num_mask_tokens = num_mask_tokens
        self.rows_per_part = check_int(rows_per_part, "rows_per_part", minimum=1)
        self.metadata = _json_normalized(dict(metadata or {}))
        self._unchecked_if_missing = frozenset(unchecked_if_missing)
        self._shard_tag = shard_tag(shard_index, num_shards)
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
            self._remove_leftover_temporaries()
            _ensure_store_file(self.root, self._store_file_content(), self._unchecked_if_missing)
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
        content = manifest_content(
            self.shard_index,
            self.num_shards,
            [path.name for path in self.root.glob(f"part-{self._shard_tag}-*.parquet")],
            sorted(self._completed),
        )
        try:
            write_json_atomically(content, self.manifest_path, indent=None)
        except OSError as error:
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
            "token_dtype": str(self.token_dtype),
            "token_dim": self.token_dim,
            "num_mask_tokens": self.num_mask_tokens,
            "num_shards": self.num_shards,
            "metadata": self.metadata,
        }

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"The writer for {self.root} (shard {self._shard_tag}) is closed.")

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

    def _remove_leftover_temporaries(self) -> None:
        """Removes temporary files that a killed writer left: any dead writer's, and all of this shard's.

        Holding the shard's lock, no live process writes this shard's files, so its temporaries are leftovers
        even when their writer ran on another host of a shared file system.
        """
        remove_stale_temporaries(self.root)
        tag = self._shard_tag
        own_prefixes = (f".part-{tag}-", f"._empty-images-{tag}-", f"._manifest-{tag}.")
        legacy_prefix = f".tmp-{tag}-"  # how earlier usam versions named this shard's temporaries
        for entry in os.scandir(self.root):
            ours = entry.name.startswith(own_prefixes) and entry.name.endswith(TEMPORARY_SUFFIX)
            if ours or entry.name.startswith(legacy_prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _scan_own_files(self) -> tuple[set[str], int]:
        completed: set[str] = set()
        last_seq = -1
        for entry in sorted(os.scandir(self.root), key=lambda entry: entry.name):
            match = PART_PATTERN.fullmatch(entry.name) or EMPTY_IMAGES_PATTERN.fullmatch(entry.name)
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
                completed.update(part_image_keys(path, self.schema))
            else:
                completed.update(read_empty_images(path))
        return completed, last_seq + 1

    def _write_part(self, table: pa.Table, seq: int) -> None:
        final_path = self.root / f"part-{self._shard_tag}-{seq:06d}.parquet"
        temp_path = _new_temporary(final_path)
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
            _write_file_atomically(final_path, json_text(content, indent=None).encode())
        except OSError as error:
            raise StoreError(
                f"Cannot write {final_path}: {error}. Fix the cause (disk space, permissions) and rerun the "
                f"same command; the {len(image_keys)} images without rows in it will be processed again."
            ) from error


# Helpers -------------------------------------------------------------------------------------------------


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
        return json.loads(json_text(metadata))
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"Store metadata must be JSON-serializable: {error}") from error


def _ensure_store_file(root: Path, content: dict[str, Any], unchecked_if_missing: frozenset[str]) -> None:
    """Creates ``_usam_store.json`` if missing (exactly one of racing creators wins) and checks it matches."""
    path = root / STORE_FILE_NAME
    if not path.exists():
        foreign = sorted(
            name for name in os.listdir(root) if not name.startswith((".", "_")) and not PART_PATTERN.fullmatch(name)
        )
        if foreign:
            raise StoreError(
                f"{root} is not empty ({foreign[0]!r}, ...) and is not a usam store (no {STORE_FILE_NAME}); "
                "choose a new or empty --out directory."
            )
        try:
            _write_file_atomically(path, json_text(content).encode())
        except FileExistsError:
            pass  # another shard created it first; it is compared below like any existing one
        except OSError as error:
            raise StoreError(f"Cannot create {path}: {error}.") from error
    existing = read_store_file(root)
    _compare_store_files(path, existing, content, unchecked_if_missing)


def _compare_store_files(
    path: Path, existing: dict[str, Any], wanted: dict[str, Any], unchecked_if_missing: frozenset[str]
) -> None:
    advice = "use a new --out directory, or the arguments of the run that created the store"
    # Stores written before usam recorded the token sizes hold SAM2's.
    recorded = {"token_dim": TOKEN_SIZE, "num_mask_tokens": NUM_MASK_TOKENS, **existing}
    if recorded.get("schema_version") != wanted["schema_version"]:
        raise StoreError(
            f"The store {path.parent} has schema version {recorded.get('schema_version')!r}, but this usam writes "
            f"version {wanted['schema_version']} (which adds SAM2's scalar signals); rows of both cannot share a "
            "store: extract into a new --out directory."
        )
    for field in ("schema_version", "token_dtype", "token_dim", "num_mask_tokens", "num_shards"):
        if recorded.get(field) != wanted[field]:
            raise StoreError(
                f"The store {path.parent} has {field} {recorded.get(field)!r} in {path.name}, but this run "
                f"has {wanted[field]!r}; {advice}."
            )
    stored, given = existing.get("metadata", {}), dict(wanted["metadata"])
    unrecorded = sorted(key for key in unchecked_if_missing if key in given and key not in stored)
    if unrecorded:
        warnings.warn(
            f"the store {path.parent} was written by an older usam that did not record {', '.join(unrecorded)}; "
            "this run cannot check that they match the run that created it (resume only with its arguments)",
            UsamWarning,
            stacklevel=4,
        )
        for key in unrecorded:
            del given[key]
    stored_values, given_values = _flattened(stored), _flattened(given)
    for key in sorted(stored_values.keys() | given_values.keys()):
        if stored_values.get(key) != given_values.get(key):
            raise StoreError(
                f"The store {path.parent} was written with {key}={stored_values.get(key)!r} ({path.name}), but "
                f"this run has {key}={given_values.get(key)!r}; {advice}."
            )


def _flattened(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys, so that a mismatch names the innermost value that differs."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _new_temporary(final_path: Path) -> Path:
    """A new, empty temporary file for ``final_path``, with the umask's mode.

    It is named as :mod:`usam.files` names temporaries, so that :func:`usam.files.remove_stale_temporaries`
    removes it if its writer dies. (``usam.files.atomic_path`` is not used: its commit overwrites.)
    """
    descriptor, name = tempfile.mkstemp(
        prefix=temporary_prefix(final_path), suffix=TEMPORARY_SUFFIX, dir=final_path.parent
    )
    os.close(descriptor)
    os.chmod(name, default_file_mode())
    return Path(name)


def _write_file_atomically(path: Path, data: bytes) -> None:
    """Writes ``path`` so that it appears complete or not at all; raises FileExistsError if it exists."""
    temp_path = _new_temporary(path)
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
