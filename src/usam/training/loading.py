"""Reading a token store into :class:`~usam.training.data.TrainingData`: all of training's store reading.

A head reads ``concat(iou_token, mask_token)`` of one (image, object, model) row. The mask token is that of the
multimask output that is best against the truth (:func:`best_mask_token`). What each head learns, and from which
rows (the target column and the transform come from :data:`usam.head_table.HEADS`):

* ``iou_<size>`` without pooling: the rows of that SAM2 size's model, each with its own ``iou``;
* ``iou_<size>`` with ``pool_sizes`` (as the paper does): the rows of every model, each with the ``iou`` of
  that size's model on the same object (same dataset, image and object id). A row whose object has no row of
  that size has no target for the head and is left out of it (counted in the metadata);
* the other heads: their own column of every model's rows; gap heads learn ``clip(gap + 0.5, 0, 1)``.

The mask token's tie rule (which of equally good masks is the best) defaults to the one the store's extraction
recorded (:attr:`usam.store.StoreReader.tie_rule`), so that the heads read the token of the mask the store's targets
were computed for.

A null target (a gap the extraction could not compute, e.g. ``model_gap`` of a store without a tiny and a large
model) means "no target by design" and the row is left out of that head silently. A row whose target or tokens
are NaN or infinite is broken data: it is dropped from the heads that would use it, a :class:`TrainingWarning`
names the counts per head and column, and the metadata records them under ``dropped_rows``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from usam.errors import InvalidInputError, StoreError, UsamWarning
from usam.extraction.targets import best_output
from usam.head_table import HEAD_NAMES, HEADS, SIZE_TARGETS_KEY, Pairing, SizeTargets
from usam.heads import SIGNAL_INPUT, TOKEN_INPUTS, input_width
from usam.models import get_model_spec, size_and_family
from usam.presets import TieRule
from usam.signals import SIGNAL_DIM, PromptSignals, SignalNormalization, signal_features
from usam.training.data import HeadRows, TrainingData, check_head_names, check_inputs, check_pairing
from usam.validation import check_choice

if TYPE_CHECKING:
    import pyarrow as pa

    from usam.store import StoreReader

"""The key under which an extraction records its tie rule in the store's options (:attr:`StoreReader.options`)."""


class TrainingWarning(UsamWarning):
    """Something about the training data that the user should know but that does not stop training."""


def load_training_data(
    store: str | os.PathLike[str] | StoreReader | pa.Table,
    heads: Sequence[str] | None = None,
    *,
    pairing: Pairing | str = Pairing.TRUE,
    models: Sequence[str] | None = None,
    pool_sizes: bool = False,
    inputs: Sequence[str] = TOKEN_INPUTS,
    cache_dir: str | os.PathLike[str] | None = None,
    tie_rule: TieRule | str | None = None,
    signal_normalization: Mapping[str, Sequence[float]] | None = None,
) -> TrainingData:
    """Read the head inputs and targets of a token store.

    Args:
        store: A token store directory (:mod:`usam.store`), a :class:`~usam.store.StoreReader` of one (read as it
            is, not opened again), or a ``pyarrow.Table`` with its columns.
        heads: Heads to load (default: every head that has at least one row with a target).
        pairing: ``"true"`` (mask k is paired with token k + 1) or ``"as-released"`` (token k).
        models: Use only rows of these models (default: all models in the store). The ``iou_<size>`` heads use
            the ones of their size, unless ``pool_sizes``.
        pool_sizes: Train every ``iou_<size>`` head on the rows of all models, each with the IoU of that size's
            model on the same object, as the paper does.
        inputs: What the heads read: both tokens (default), ``["iou_token"]`` / ``["mask_token"]`` for ablations,
            and/or ``"signals"`` last (:data:`usam.heads.INPUTS_OF_VARIANT`): the best mask's signal vector,
            standardised over the rows read (the normalisation goes into the data and the heads file).
        cache_dir: If given, the feature matrix is written to a file in this directory and memory-mapped, so
            that stores larger than the RAM can be trained on (the file is deleted once mapped, where the
            operating system allows it).
        tie_rule: Which of equally good masks gives the mask token (``"last"`` as the authors' code). Default: the
            store's recorded one (:attr:`usam.store.StoreReader.tie_rule`; ``"first"`` for a store or table that
            records none).
        signal_normalization: For inputs with signals: scale them as these trained heads do (their file's
            ``signal_normalization``) instead of fitting the scaling on these rows.

    Returns:
        The training data.

    Raises:
        StoreError: If the store cannot be read, lacks a needed column or records an unknown tie rule.
        InvalidInputError: If an argument is invalid, a model is not in the store, a requested head has no
            usable rows, or sizes are pooled while two models of one size are used.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from usam.store import KEY_COLUMNS, SIGNAL_COLUMNS, image_names

    pairing = check_pairing(pairing)
    if tie_rule is not None:
        tie_rule = check_choice(TieRule, tie_rule, "tie_rule")
    inputs = check_inputs(inputs)
    requested = None if heads is None else check_head_names(heads)
    wanted = list(HEAD_NAMES) if requested is None else requested
    reader, description = _open(store)
    if tie_rule is None:
        tie_rule = reader.tie_rule or TieRule.FIRST

    token_columns = (["iou_token"] if "iou_token" in inputs else []) + (
        ["mask_tokens", "mask_ious"] if "mask_token" in inputs else []
    )
    if SIGNAL_INPUT in inputs:
        # A store from before the signals says how to get them.
        reader.check_columns(SIGNAL_COLUMNS, "training heads that read signals")
        token_columns = sorted({*token_columns, "mask_ious", *SIGNAL_COLUMNS})
    store_columns = set(reader.columns)
    key_columns = [name for name in KEY_COLUMNS if name in store_columns]
    # Asked-for heads need their target column; by default, heads whose column is absent are skipped.
    required = {"image_key", "model", *token_columns, *(HEADS[name].target_column for name in requested or [])}
    if pool_sizes and any(HEADS[name].model_size for name in wanted):
        required.add("object_id")
    missing = sorted(required - store_columns)
    if missing:
        raise StoreError(
            f"{description} lacks column(s) {missing} that training needs; is it a usam token store "
            f"(usam.store.row_schema)?"
        )
    token_dim = reader.token_dim

    store_models = reader.models()
    if not store_models:
        raise InvalidInputError(f"{description} has no rows; extract tokens into it first")
    candidates = _check_models(models, store_models, description)
    size_models = _size_models(wanted, candidates, pool_sizes)
    head_models = {name: _models_of_head(name, candidates, size_models, pool_sizes) for name in wanted}
    head_models = {
        name: used for name, used in head_models.items() if used and HEADS[name].target_column in store_columns
    }
    if requested is not None:
        missing_heads = [name for name in requested if name not in head_models]
        if missing_heads:
            raise InvalidInputError(
                f"no rows for head(s) {missing_heads}: the models {candidates} include no model of their size; "
                "add one with `models` or drop those heads"
            )
    if not head_models:
        raise InvalidInputError(f"none of the heads {wanted} has rows among the models {candidates}")
    needed_models = sorted(
        {model for used in head_models.values() for model in used}
        | {size_models[name] for name in head_models if pool_sizes and name in size_models}
    )
    target_columns = sorted({HEADS[name].target_column for name in head_models})
    row_filter = None if needed_models == store_models else pc.field("model").isin(needed_models)

    num_rows = reader.count_rows(row_filter)
    features, cache_path = _allocate_features(num_rows, input_width(inputs, token_dim), cache_dir)
    finite_tokens = np.ones(num_rows, dtype=bool)
    columns_kept: dict[str, list[pa.Array]] = {name: [] for name in [*key_columns, *target_columns]}
    position = 0
    for table in reader.iter_batches(sorted({*key_columns, *token_columns, *target_columns}), row_filter):
        if position + table.num_rows > num_rows:
            raise StoreError(f"{description} changed while it was being read; read it again when it is idle")
        written = features[position : position + table.num_rows]
        fill_head_features(table, written, inputs, pairing, tie_rule)
        finite_tokens[position : position + table.num_rows] = np.isfinite(written).all(axis=1)
        for name in columns_kept:
            columns_kept[name].extend(table.column(name).chunks)
        position += table.num_rows
    if position != num_rows:
        raise StoreError(f"{description} changed while it was being read; read it again when it is idle")
    normalization = None
    if SIGNAL_INPUT in inputs:
        # Signals differ in scale by orders of magnitude (logits, fractions); the heads file keeps the scaling.
        # Trained heads bring their own scaling (``signal_normalization``); new heads fit it on these rows.
        normalization = (
            SignalNormalization.fit(features[:, -SIGNAL_DIM:])
            if signal_normalization is None
            else SignalNormalization.from_dict(signal_normalization)
        )
        features[:, -SIGNAL_DIM:] = normalization.apply(features[:, -SIGNAL_DIM:])
    if cache_path is not None:
        features = _map_features(features, cache_path)

    columns = {
        name: pa.chunked_array(chunks, type=reader.schema.field(name).type) for name, chunks in columns_kept.items()
    }
    # Rows arrive in no guaranteed order; the heads' row lists follow the sorted keys, so that the same store
    # always gives the same training run.
    order = (
        pc.sort_indices(
            pa.table({name: columns[name] for name in key_columns}),
            sort_keys=[(name, "ascending") for name in key_columns],
        )
        .to_numpy()
        .astype(np.int64)
    )
    row_images = (
        image_names(columns["dataset"], columns["image_key"])
        if "dataset" in columns
        else columns["image_key"].to_numpy(zero_copy_only=False).astype(str)
    )
    image_keys, image_ids = np.unique(row_images, return_inverse=True)
    row_models = columns["model"].to_numpy(zero_copy_only=False).astype(str)
    object_keys = _object_keys(columns) if pool_sizes and size_models else None

    head_rows: dict[str, HeadRows] = {}
    dropped: dict[str, dict[str, int]] = {}
    without_size_target: dict[str, int] = {}
    empty_heads = []
    for name, used in head_models.items():
        spec = HEADS[name]
        values, absent = _target_values(columns[spec.target_column])
        in_head = np.isin(row_models, used)
        if pool_sizes and name in size_models:
            assert object_keys is not None
            values, absent = _values_of_model(values, absent, object_keys, row_models == size_models[name])
            without_size_target[name] = int((in_head & absent).sum())
        present = in_head & ~absent
        bad_target = present & ~np.isfinite(values)
        bad_tokens = present & ~bad_target & ~finite_tokens
        counts = {spec.target_column: int(bad_target.sum()), "tokens": int(bad_tokens.sum())}
        if any(counts.values()):
            dropped[name] = {key: count for key, count in counts.items() if count}
        usable = present & ~bad_target & ~bad_tokens
        rows = order[usable[order]]
        if rows.size == 0:
            empty_heads.append(name)
            continue
        head_rows[name] = HeadRows(rows=rows, targets=spec.training_target(values[rows]).astype(np.float32))
    if dropped:
        warnings.warn(_dropped_message(dropped, description), TrainingWarning, stacklevel=2)
    if requested is not None and empty_heads:
        raise InvalidInputError(
            f"head(s) {empty_heads} have no rows with a target among the models {candidates} (their target "
            "column is null or non-finite there); drop them or use other models"
        )
    if not head_rows:
        raise InvalidInputError(f"none of the heads {wanted} has rows with a target in {description}")

    used_models = sorted(
        {model for name in head_rows for model in head_models[name]}
        | {size_models[name] for name in head_rows if pool_sizes and name in size_models}
    )
    datasets = (
        sorted(pc.unique(columns["dataset"].filter(pc.is_in(columns["model"], pa.array(used_models)))).to_pylist())
        if "dataset" in columns
        else []
    )
    source: dict[str, Any] = {
        "store": description,
        "models": used_models,
        "datasets": datasets,
        "pool_sizes": bool(pool_sizes),
        SIZE_TARGETS_KEY: str(SizeTargets.POOLED if pool_sizes else SizeTargets.OWN_ROWS),
        "tie_rule": str(tie_rule),
        "models_per_head": {name: head_models[name] for name in head_rows},
        "rows": {name: int(head.rows.size) for name, head in head_rows.items()},
    }
    if pool_sizes:
        source["size_target_models"] = {name: size_models[name] for name in head_rows if name in size_models}
        source["rows_without_size_target"] = {
            name: without_size_target[name] for name in head_rows if name in size_models
        }
    if dropped:
        source["dropped_rows"] = {name: counts for name, counts in dropped.items()}
    skipped = [name for name in wanted if name not in head_rows]
    if skipped:
        source["skipped_heads"] = skipped
    return TrainingData(
        features=features,
        image_ids=image_ids.astype(np.int64).reshape(-1),
        image_keys=image_keys,
        heads=head_rows,
        inputs=inputs,
        pairing=pairing,
        token_dim=token_dim,
        sam2_version=_common_sam2_version(used_models),
        source=source,
        signal_normalization=None if normalization is None else normalization.to_dict(),
    )


def best_mask_token(
    mask_ious: np.ndarray, pairing: Pairing | str, tie_rule: TieRule | str = TieRule.FIRST
) -> np.ndarray:
    """Index (0..3) of the mask token paired with the best of the three multimask outputs.

    Args:
        mask_ious: ``(N, 3)`` IoU with the truth of the three multimask outputs; NaN counts as worst.
        pairing: ``"true"``: output k was produced by token k + 1; ``"as-released"``: token k, as the paper's
            code pairs them.
        tie_rule: Which of several equally good outputs is the best (see :func:`usam.extraction.targets.best_output`).

    Returns:
        ``(N,)`` int64 token indices.
    """
    best = best_output(mask_ious, tie_rule)
    return best + 1 if check_pairing(pairing) == Pairing.TRUE else best


def fill_head_features(
    table: pa.Table,
    out: np.ndarray,
    inputs: tuple[str, ...],
    pairing: Pairing | str,
    tie_rule: TieRule | str = TieRule.FIRST,
) -> None:
    """Write the head inputs of every store row into ``out``, ``(N, input_width(inputs, token_dim))``, in order.

    The token width is that of ``out`` (allocate it with :func:`usam.heads.input_width` and
    :attr:`StoreReader.token_dim`); the mask token is the one of the mask that is best against the truth, chosen by
    :func:`best_mask_token` with ``tie_rule``. The ``"signals"`` part is that mask's signal vector
    (:func:`usam.signals.signal_features` of the store's signal columns at the same token), not normalised.
    """
    from usam.store import token_arrays

    token_parts = [part for part in inputs if part != SIGNAL_INPUT]
    token_dim = (out.shape[1] - input_width([part for part in inputs if part == SIGNAL_INPUT], 0)) // max(
        len(token_parts), 1
    )
    chosen = None
    if "mask_token" in inputs or SIGNAL_INPUT in inputs:
        chosen = best_mask_token(token_arrays(table, "mask_ious", np.float32), pairing, tie_rule)
    start = 0
    for part in inputs:
        if part == "iou_token":
            values = token_arrays(table, "iou_token")
        elif part == "mask_token":
            num_mask_tokens = table.schema.field("mask_tokens").type.list_size // token_dim
            stacked = token_arrays(table, "mask_tokens", num_mask_tokens=num_mask_tokens)
            values = stacked[np.arange(len(stacked)), chosen]
        else:
            values = signal_features(store_signals(table), torch.from_numpy(chosen).reshape(-1, 1)).numpy()
        out[:, start : start + values.shape[1]] = values
        start += values.shape[1]


def store_signals(table: pa.Table) -> PromptSignals:
    """The signals of a table's rows, from the store's signal columns (a vector per token, a scalar per prompt)."""
    import pyarrow as pa

    from usam.store import SIGNAL_COLUMNS, token_arrays

    arrays = {}
    for name in SIGNAL_COLUMNS:
        column = table.column(name)
        arrays[name] = column.to_numpy() if not pa.types.is_fixed_size_list(column.type) else token_arrays(table, name)
    return PromptSignals.from_arrays(arrays)


def model_size(model: str) -> str | None:
    """The SAM2 size of a model name: a released name's, else the size it ends with (e.g. "my-finetune-large")."""
    return size_and_family(model)[0]


def _open(store: str | os.PathLike[str] | StoreReader | pa.Table) -> tuple[StoreReader, str]:
    import pyarrow as pa

    from usam.store import StoreReader

    if isinstance(store, pa.Table):
        return StoreReader.from_table(store), "in-memory table"
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    return reader, str(reader.root)


def _target_values(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A target column as float64 values and where it is null (no target by design); NaN stays NaN."""
    is_null = column.is_null().to_numpy(zero_copy_only=False).astype(bool)
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return values, is_null


def _object_keys(columns: dict[str, pa.ChunkedArray]) -> np.ndarray:
    """One string per row naming its object (dataset, image, object id), to join rows of several models."""
    import pyarrow.compute as pc

    from usam.store import KEY_COLUMNS

    parts = [columns[name] for name in KEY_COLUMNS if name != "model" and name in columns]
    return pc.binary_join_element_wise(*parts, "\x1f").to_numpy(zero_copy_only=False).astype(str)


def _values_of_model(
    values: np.ndarray, absent: np.ndarray, object_keys: np.ndarray, of_model: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the value (and absence) of the row of the same object among the rows ``of_model``.

    Rows whose object has no such row are absent.
    """
    model_keys = object_keys[of_model]
    order = np.argsort(model_keys, kind="stable")
    sorted_keys = model_keys[order]
    position = np.minimum(np.searchsorted(sorted_keys, object_keys), max(len(sorted_keys) - 1, 0))
    found = sorted_keys[position] == object_keys if len(sorted_keys) else np.zeros(len(object_keys), dtype=bool)
    source_rows = np.flatnonzero(of_model)[order][position] if len(sorted_keys) else position
    joined = np.where(found, values[source_rows], np.nan)
    return joined, ~found | absent[source_rows]


def _dropped_message(dropped: dict[str, dict[str, int]], description: str) -> str:
    detail = "; ".join(
        f"{name}: " + ", ".join(f"{count} in {column}" for column, count in counts.items())
        for name, counts in dropped.items()
    )
    return (
        f"dropped row(s) with NaN or infinite values in {description} from training ({detail}); "
        "re-extract them to train on them"
    )


def _allocate_features(
    rows: int, width: int, cache_dir: str | os.PathLike[str] | None
) -> tuple[np.ndarray, Path | None]:
    if cache_dir is None:
        return np.empty((rows, width), dtype=np.float32), None
    directory = Path(cache_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    # A scratch file that is unlinked as soon as it is mapped, not an artifact: usam.files' atomic writers do not
    # apply (nothing is ever published under this name).
    descriptor, name = tempfile.mkstemp(prefix="usam-features-", suffix=".npy", dir=directory)
    os.close(descriptor)
    path = Path(name)
    try:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width)), path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _map_features(written: np.ndarray, path: Path) -> np.ndarray:
    written.flush()
    del written
    # Copy-on-write: the array is writable (torch.from_numpy warns about read-only arrays) but nothing is ever
    # written back, and pages are read from the file on demand.
    features = np.load(path, mmap_mode="c")
    # The mapping keeps the data alive after the name is gone, so no file is left behind. Windows refuses to
    # delete a mapped file; there it stays in cache_dir.
    with contextlib.suppress(OSError):
        path.unlink()
    return features


def _check_models(models: Sequence[str] | None, store_models: list[str], description: str) -> list[str]:
    if models is None:
        return store_models
    if isinstance(models, str):
        models = [models]
    unknown = [model for model in models if model not in store_models]
    if unknown or not models:
        raise InvalidInputError(f"model(s) {unknown or '[]'} are not in {description}; it has rows of {store_models}")
    return sorted(set(models))


def _size_models(wanted: Sequence[str], candidates: list[str], pool_sizes: bool) -> dict[str, str]:
    """For pooled sizes, the one model whose IoU each wanted ``iou_<size>`` head learns (heads without one: absent).

    Raises:
        InvalidInputError: If two of the models have the size of a wanted head (its target would be ambiguous).
    """
    if not pool_sizes:
        return {}
    chosen = {}
    for name in wanted:
        size = HEADS[name].model_size
        if size is None:
            continue
        of_size = [model for model in candidates if model_size(model) == size]
        if len(of_size) > 1:
            raise InvalidInputError(
                f"pooled {name} needs the IoU of one {size} model, but the models include {of_size}; "
                "choose one of them with `models`"
            )
        if of_size:
            chosen[name] = of_size[0]
    return chosen


def _models_of_head(name: str, candidates: list[str], size_models: dict[str, str], pool_sizes: bool) -> list[str]:
    size = HEADS[name].model_size
    if size is None:
        return list(candidates)
    if pool_sizes:
        return list(candidates) if name in size_models else []
    return [model for model in candidates if model_size(model) == size]


def _common_sam2_version(models: Sequence[str]) -> str | None:
    versions = set()
    for model in models:
        try:
            versions.add(get_model_spec(model).version)
        except InvalidInputError:
            return None
    return versions.pop() if len(versions) == 1 else None
