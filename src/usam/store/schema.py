"""The row schema of a token store: its columns, their sizes, the schema version, and rows <-> Arrow tables.

One row per (image, object, model). :func:`row_schema` is the single source of the column list; the token widths
come from the model (``token_dim``, ``num_mask_tokens``) and default to those of every released SAM2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from usam.errors import InvalidInputError, StoreError
from usam.validation import StrEnum, check_int

SCHEMA_VERSION = 2
"""Version of the row schema that usam writes. Version 2 added SAM2's scalar signals (:data:`SIGNAL_COLUMNS`)."""
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
"""Schema versions usam reads. A version 1 store lacks the signal columns: it serves everything that does not
need them, and asking for them is an error that says to extract again."""
FORMAT_NAME = "usam-token-store"

TOKEN_SIZE = 256
"""Width of one decoder token of every released SAM2 (the default of ``token_dim``)."""
NUM_MASK_TOKENS = 4
"""Mask tokens of every released SAM2's decoder: the single-mask token and three multimask tokens (the default of
``num_mask_tokens``)."""
NUM_MASK_OUTPUTS = 3
"""Scores are recorded for the three masks of a multimask call."""
NUM_EXTRA_POINTS = 7
"""Extra positive clicks sampled per object besides its center point (the dense prompt uses all eight)."""


class TokenDtype(StrEnum):
    """Value type of the token columns (scores, points and targets are float32 either way)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    """Half the disk space; tokens lose about three decimal digits."""


TOKEN_DTYPES: tuple[str, ...] = tuple(TokenDtype.values())

SIGNAL_COLUMNS: tuple[str, ...] = (
    "token_sam_scores",
    "object_score_logit",
    "token_entropies",
    "token_area_fractions",
    "token_stabilities",
)
"""SAM2's scalar signals of the center prompt's multimask call (schema version 2): per mask token (single-mask
token 0, then the multimask tokens 1-3) the predicted IoU, H_Std, area fraction and stability score, and the
object-score logit; what they mean is :mod:`usam.signals`' (its :class:`~usam.signals.PromptSignals` fields)."""

KEY_COLUMNS: tuple[str, ...] = ("dataset", "image_key", "object_id", "model")
"""The columns that identify a row; sorting by them gives every reader the same row order."""

_SCHEMA_VERSION_KEY = b"usam.schema_version"


def row_schema(
    token_dtype: TokenDtype | str = TokenDtype.FLOAT32,
    *,
    token_dim: int = TOKEN_SIZE,
    num_mask_tokens: int = NUM_MASK_TOKENS,
    schema_version: int = SCHEMA_VERSION,
) -> pa.Schema:
    """The schema of a store row; the single source of the store's column list.

    Vector columns are fixed-size lists. ``extra_points`` holds 7 points as ``(x, y)`` pairs and the
    ``*mask_tokens`` columns hold ``num_mask_tokens`` tokens of ``token_dim`` values, both flattened
    row-major. ``model_gap`` is null when the job's model list lacks the tiny or the large model; the ``h_*``
    columns are null when the Monte Carlo part of the extraction was skipped. The signal columns
    (:data:`SIGNAL_COLUMNS`, schema version 2) hold ``num_mask_tokens`` values each, ``object_score_logit`` one.

    Args:
        token_dtype: ``"float32"`` or ``"float16"``, the value type of the token columns. Scores, points
            and targets are float32 either way.
        token_dim: Width of one decoder token (:func:`usam.sam2_adapter.token_dim_of` of the model).
        num_mask_tokens: Mask tokens per decoder call (:func:`usam.sam2_adapter.num_mask_tokens_of`).
        schema_version: The schema of this version (one of :data:`READABLE_SCHEMA_VERSIONS`), to read older stores.

    Returns:
        The Arrow schema, with the schema version in its metadata.

    Raises:
        InvalidInputError: If ``token_dtype`` is not one of :data:`TOKEN_DTYPES`, a size is not positive, or
            the schema version is not one usam reads.
    """
    token_type = _token_value_type(token_dtype)
    check_int(token_dim, "token_dim", minimum=1)
    check_int(num_mask_tokens, "num_mask_tokens", minimum=1)
    if schema_version not in READABLE_SCHEMA_VERSIONS:
        raise InvalidInputError(
            f"schema_version must be one of {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}, got {schema_version!r}"
        )
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
        vector("iou_token", token_type, token_dim),
        vector("mask_tokens", token_type, num_mask_tokens * token_dim),
        vector("sam_scores", float32, NUM_MASK_OUTPUTS),
        vector("mask_ious", float32, NUM_MASK_OUTPUTS),
        vector("dense_sam_scores", float32, NUM_MASK_OUTPUTS),
        vector("dense_mask_ious", float32, NUM_MASK_OUTPUTS),
        vector("dense_iou_token", token_type, token_dim),
        vector("dense_mask_tokens", token_type, num_mask_tokens * token_dim),
        pa.field("iou", float32, nullable=False),
        pa.field("unsupervised_iou", float32, nullable=False),
        pa.field("iou_dense_prompt", float32, nullable=False),
    ]
    fields += [pa.field(name, float32, nullable=True) for name in ("model_gap", "prompt_gap", "task_gap")]
    entropy_names = ("h_std", "h_theta", "h_prompt", "h_augmentation", "h_task", "h_all")
    entropy_names += tuple(f"{name}_sam_pick" for name in entropy_names if name not in ("h_task", "h_all"))
    entropy_names += ("h_all_sam_pick",)
    fields += [pa.field(name, float32, nullable=True) for name in entropy_names]
    if schema_version >= 2:
        # One value per mask token, except the prompt's one object-score logit.
        fields += [
            vector(name, float32, num_mask_tokens) if name != "object_score_logit" else pa.field(name, float32, False)
            for name in SIGNAL_COLUMNS
        ]
    return pa.schema(fields, metadata={_SCHEMA_VERSION_KEY: str(schema_version).encode()})


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


def token_arrays(
    table: pa.Table, column: str, dtype: npt.DTypeLike | None = None, *, num_mask_tokens: int = NUM_MASK_TOKENS
) -> np.ndarray:
    """A fixed-size-list column of a table as one numpy array, without a Python loop over rows.

    The result has shape ``(N, k)``, or ``(N, num_mask_tokens, token_dim)`` for the ``*mask_tokens`` columns.
    It shares memory with the table (and is then read-only) when the column is one chunk without nulls and no
    cast is asked for; a table read from several parts is one copy. float16 tokens stay float16 unless ``dtype``
    says otherwise.

    Args:
        table: A table with the column, e.g. from :meth:`StoreReader.read`.
        column: Name of a fixed-size-list column, e.g. ``"iou_token"``.
        dtype: Optional numpy dtype to cast to, e.g. ``np.float32`` to upcast float16 tokens.
        num_mask_tokens: Tokens per row of the ``*mask_tokens`` columns (:attr:`StoreReader.num_mask_tokens`
            knows it for a store).

    Returns:
        The column's values as an ``(N, k)`` or ``(N, num_mask_tokens, token_dim)`` array.

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
    if column.endswith("mask_tokens"):
        return values.reshape(len(array), num_mask_tokens, size // num_mask_tokens)
    return values.reshape(len(array), size)


def image_names(dataset_column: Any, image_key_column: Any) -> np.ndarray:
    """``"<dataset>/<image_key>"`` per row: the name that splits rows by image (image keys repeat across datasets).

    Args:
        dataset_column: The ``dataset`` values: a pyarrow (chunked) array, a numpy array or a list of strings.
        image_key_column: The ``image_key`` values, as many as ``dataset_column``.

    Returns:
        A numpy array of ``str``.

    Example:
        >>> image_names(["coco", "ade20k"], ["000001", "000001"]).tolist()
        ['coco/000001', 'ade20k/000001']
    """
    joined = pc.binary_join_element_wise(_string_array(dataset_column), _string_array(image_key_column), "/")
    return np.asarray(joined.to_numpy(zero_copy_only=False)).astype(str)


def _string_array(values: Any) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    return pa.array(np.asarray(values).astype(str), type=pa.string())


# Helpers -------------------------------------------------------------------------------------------------


def _token_value_type(token_dtype: TokenDtype | str) -> pa.DataType:
    # check_choice would word this differently; users and tests know this message.
    if token_dtype not in TOKEN_DTYPES:
        raise InvalidInputError(f"token_dtype must be one of {', '.join(TOKEN_DTYPES)}, got {token_dtype!r}.")
    return pa.float16() if token_dtype == TokenDtype.FLOAT16 else pa.float32()


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
