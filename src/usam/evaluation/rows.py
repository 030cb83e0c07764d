"""Reading the rows an evaluation needs from a token store, and running the heads on their tokens.

The store is read through one :class:`usam.store.StoreReader`. Which models are read: the evaluated model, and the
tiny and large models of its SAM2 version (for model selection). Heads run on the rows of the evaluated and the
tiny model, fed with exactly the features the trainer builds (:func:`usam.training.fill_head_features`), with the
mask token chosen by the tie rule the store records (``"first"`` if it records none). Rows whose tokens are not
finite get NaN head outputs and are counted, so that a report can name that cause.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam.errors import InvalidInputError
from usam.heads import SIGNAL_INPUT, TOKEN_INPUTS, UncertaintyHeads, input_width
from usam.models import SIZES, get_model_spec, size_and_family
from usam.presets import TieRule
from usam.signals import NUM_TOKENS, SIGNAL_DIM
from usam.store import KEY_COLUMNS, SIGNAL_COLUMNS, StoreReader, image_names
from usam.training import fill_head_features

IOU_COLUMNS: tuple[str, ...] = ("iou", "unsupervised_iou", "iou_dense_prompt")
"""Store columns of IoUs before or after a correction."""
GAP_COLUMNS: tuple[str, ...] = ("model_gap", "prompt_gap", "task_gap")
"""Store columns of the true gains."""

# Heads run on this many rows at a time, which bounds their activations to some tens of MB.
_HEAD_CHUNK_ROWS = 2048


@dataclasses.dataclass
class Rows:
    """Rows of a store with what the evaluation needs, sorted by dataset, image, object and model.

    Attributes:
        dataset, image_key, object_id, model: ``(N,)`` string arrays.
        values: Per IoU, gap and entropy column, ``(N,)`` float64 with NaN for null.
        sam_scores: ``(N, 3)`` SAM's scores of the three multimask outputs.
        mask_ious: ``(N, 3)`` IoU of the three outputs with the truth.
        head_values: Per loaded head, ``(N,)`` float64 outputs; NaN on rows whose tokens were not read or are not
            finite.
        token_rows: ``(N,)`` index of a row's features in :attr:`features`, -1 if its tokens were not read.
        nonfinite_tokens: ``(N,)`` whether a row's tokens were read and hold NaN or infinity.
        features: ``(T, 2 * token_dim)`` IoU token and best mask token of the rows with tokens, or None.
        signals: ``(T, SIGNAL_DIM)`` the best mask's signal vector (:mod:`usam.signals`, not normalised) of the
            same rows, or None when not kept or the store has no signal columns (schema version 1).
    """

    dataset: np.ndarray
    image_key: np.ndarray
    object_id: np.ndarray
    model: np.ndarray
    values: dict[str, np.ndarray]
    sam_scores: np.ndarray
    mask_ious: np.ndarray
    head_values: dict[str, np.ndarray]
    token_rows: np.ndarray
    nonfinite_tokens: np.ndarray
    features: np.ndarray | None
    signals: np.ndarray | None = None

    def indices_of(self, model: str) -> np.ndarray:
        """Indices of the rows of one model, in sorted order."""
        return np.flatnonzero(self.model == model)

    def object_keys(self, indices: np.ndarray) -> list[tuple[str, str, str]]:
        """The ``(dataset, image_key, object_id)`` of some rows."""
        return list(
            zip(
                self.dataset[indices].tolist(),
                self.image_key[indices].tolist(),
                self.object_id[indices].tolist(),
                strict=True,
            )
        )

    def image_names(self, indices: np.ndarray) -> np.ndarray:
        """``"<dataset>/<image_key>"`` of some rows, as the trainer names images (:func:`usam.store.image_names`)."""
        return image_names(self.dataset[indices], self.image_key[indices])


@dataclasses.dataclass(frozen=True)
class EvaluatedModels:
    """The store's models an evaluation uses.

    Attributes:
        evaluated: The model whose rows are evaluated.
        tiny: The tiny model of the evaluated model's SAM2 version, or None if the store has none.
        large: The large model of that version, or None.
    """

    evaluated: str
    tiny: str | None
    large: str | None

    @property
    def token_models(self) -> list[str]:
        """Models whose tokens the heads read: the evaluated one and the tiny one (the base of model selection)."""
        return sorted({self.evaluated} | ({self.tiny} if self.tiny else set()))

    @property
    def read_models(self) -> list[str]:
        """Every model whose rows are read."""
        return sorted(set(self.token_models) | ({self.large} if self.large else set()))


def size_and_version(model: str | None) -> tuple[str | None, str | None]:
    """SAM2 size and version of a model name; for an unknown name, a size suffix and the rest as version.

    Example:
        >>> size_and_version("sam2.1-base-plus"), size_and_version("my-sam-large"), size_and_version("x")
        (('base-plus', 'sam2.1'), ('large', 'my-sam'), (None, None))
    """
    return (None, None) if model is None else size_and_family(model)


def resolve_models(model: str, store_models: Sequence[str], store: Path) -> EvaluatedModels:
    """The store's model to evaluate (a size or a model name) and the tiny and large models of its version.

    Raises:
        InvalidInputError: If ``model`` is unknown, or the store has no or several models that match it.
    """
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(f"model must be a SAM2 size ({', '.join(SIZES)}) or model name, got {model!r}")
    wanted = model.strip().lower()
    size_aliases = {size: size for size in SIZES} | {"base_plus": "base-plus", "base+": "base-plus", "b+": "base-plus"}
    if wanted in size_aliases:
        size = size_aliases[wanted]
        candidates = [name for name in store_models if size_and_version(name)[0] == size]
    else:
        spec_name = _spec_name(wanted) or wanted
        candidates = [name for name in store_models if name.lower() == wanted or _spec_name(name) == spec_name]
        if not candidates and size_and_version(wanted)[0] is None:
            raise InvalidInputError(
                f"unknown model {model!r}; give a SAM2 size ({', '.join(SIZES)}) or a model name from the store "
                f"({', '.join(store_models)})"
            )
    if not candidates:
        raise InvalidInputError(
            f"the store {store} has no rows of a {model!r} model; it has rows of {', '.join(store_models)}"
        )
    if len(candidates) > 1:
        raise InvalidInputError(
            f"the store {store} has several {model!r} models ({', '.join(candidates)}); pass the full model name"
        )
    evaluated = candidates[0]
    version = size_and_version(evaluated)[1]

    def same_version(size: str) -> str | None:
        matches = [name for name in store_models if size_and_version(name) == (size, version)]
        return matches[0] if len(matches) == 1 else None

    return EvaluatedModels(evaluated, same_version("tiny"), same_version("large"))


def _spec_name(name: str) -> str | None:
    try:
        return get_model_spec(name).name
    except InvalidInputError:
        return None


def read_rows(
    reader: StoreReader,
    models: EvaluatedModels,
    heads: UncertaintyHeads,
    *,
    keep_features: bool,
    progress: bool,
) -> Rows:
    """Read the rows of the models an evaluation uses; run the heads (and keep both-token features) on their tokens.

    Args:
        reader: The token store.
        models: The models to read.
        heads: The heads to run on the rows of :attr:`EvaluatedModels.token_models`.
        keep_features: Keep the IoU token and best mask token of those rows (for the token ablation).
        progress: Show a progress bar.

    Returns:
        The rows, sorted by dataset, image, object and model.

    Raises:
        InvalidInputError: If the heads read tokens of another size than the store holds.
        StoreError: If the store cannot be read or records an unknown tie rule.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    token_dim = reader.token_dim
    if heads.metadata.token_dim != token_dim:
        raise InvalidInputError(
            f"the heads read tokens of {heads.metadata.token_dim} values, the store holds tokens of {token_dim}; "
            "use heads trained on this kind of store"
        )
    tie_rule = reader.tie_rule or TieRule.FIRST
    entropy_columns = [name for name in reader.columns if name.startswith("h_")]
    value_columns = [*IOU_COLUMNS, *GAP_COLUMNS, *entropy_columns]
    columns = [*KEY_COLUMNS, *value_columns, "sam_scores", "mask_ious", "iou_token", "mask_tokens"]
    if heads.metadata.reads_signals:
        reader.check_columns(SIGNAL_COLUMNS, "evaluating heads that read signals")
    # The signals are read when the heads need them or the ablation can train on them (a store that has them).
    store_has_signals = set(SIGNAL_COLUMNS) <= set(reader.columns) and reader.num_mask_tokens == NUM_TOKENS
    with_signals = heads.metadata.reads_signals or (keep_features and store_has_signals)
    if with_signals:
        columns += list(SIGNAL_COLUMNS)
    heads_inputs = tuple(heads.metadata.inputs)
    both_inputs = tuple(TOKEN_INPUTS)
    read_inputs = (*both_inputs, SIGNAL_INPUT) if with_signals else both_inputs
    signal_part = slice(2 * token_dim, None)
    pairing = heads.metadata.pairing
    row_filter = pc.field("model").isin(models.read_models)

    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*KEY_COLUMNS, *value_columns]}
    sam_scores, mask_ious, has_tokens, nonfinite, head_outputs, features, signals = [], [], [], [], [], [], []
    total = reader.count_rows(row_filter)
    with tqdm(total=total, desc="reading store", unit="row", disable=not progress) as bar:
        for table in reader.iter_batches(columns, row_filter):
            for name in parts:
                parts[name].append(table.column(name).to_numpy(zero_copy_only=False))
            sam_scores.append(reader.tokens(table, "sam_scores", np.float64))
            mask_ious.append(reader.tokens(table, "mask_ious", np.float64))
            with_tokens = np.isin(table.column("model").to_numpy(zero_copy_only=False), models.token_models)
            has_tokens.append(with_tokens)
            token_table = table.filter(pa.array(with_tokens))
            read = np.empty((token_table.num_rows, input_width(read_inputs, token_dim)), dtype=np.float32)
            fill_head_features(token_table, read, read_inputs, pairing, tie_rule)
            both = read[:, : 2 * token_dim]
            bad = ~np.isfinite(both).all(axis=1)
            nonfinite.append(bad)
            inputs = both if heads_inputs == both_inputs else _select_inputs(read, heads, token_dim)
            outputs = run_heads(heads, inputs).T
            outputs[bad] = np.nan  # infinity can give a finite output; such a row has no head value
            head_outputs.append(outputs)
            if keep_features:
                features.append(np.ascontiguousarray(both))
                if with_signals:
                    signals.append(np.ascontiguousarray(read[:, signal_part]))
            bar.update(table.num_rows)

    def joined(chunks: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.empty(shape, dtype=dtype)

    has_tokens_all = joined(has_tokens, (0,), bool)
    num_rows = has_tokens_all.size
    keys = {name: joined(parts[name], (0,), object).astype(str) for name in KEY_COLUMNS}
    values = {name: joined(parts[name], (0,), np.float64).astype(np.float64) for name in value_columns}
    outputs = joined(head_outputs, (0, len(heads.names)), np.float64)
    token_rows = np.full(num_rows, -1, dtype=np.int64)
    token_rows[has_tokens_all] = np.arange(int(has_tokens_all.sum()))
    nonfinite_all = np.zeros(num_rows, dtype=bool)
    nonfinite_all[has_tokens_all] = joined(nonfinite, (0,), bool)
    head_values = {}
    for index, name in enumerate(heads.names):
        column = np.full(num_rows, np.nan)
        column[has_tokens_all] = outputs[:, index]
        head_values[name] = column

    # The store returns rows in no guaranteed order; random baselines depend on the order of the objects.
    order = np.lexsort([keys[name] for name in reversed(KEY_COLUMNS)])
    return Rows(
        dataset=keys["dataset"][order],
        image_key=keys["image_key"][order],
        object_id=keys["object_id"][order],
        model=keys["model"][order],
        values={name: column[order] for name, column in values.items()},
        sam_scores=joined(sam_scores, (0, 3), np.float64)[order],
        mask_ious=joined(mask_ious, (0, 3), np.float64)[order],
        head_values={name: column[order] for name, column in head_values.items()},
        token_rows=token_rows[order],
        nonfinite_tokens=nonfinite_all[order],
        features=joined(features, (0, 2 * token_dim), np.float32) if keep_features else None,
        signals=joined(signals, (0, SIGNAL_DIM), np.float32) if keep_features and with_signals else None,
    )


def _select_inputs(read: np.ndarray, heads: UncertaintyHeads, token_dim: int) -> np.ndarray:
    """The heads' inputs, in their order, out of [IoU token, mask token (, raw signal vector)] features.

    The signal vector is normalised with the heads' own normalisation, as the predictor does.
    """
    position = {name: index for index, name in enumerate(TOKEN_INPUTS)}
    parts = []
    for name in heads.metadata.inputs:
        if name == SIGNAL_INPUT:
            parts.append(heads.metadata.normalization.apply(read[:, 2 * token_dim :]))
        else:
            parts.append(read[:, position[name] * token_dim : (position[name] + 1) * token_dim])
    return np.concatenate(parts, 1)


def run_heads(heads: UncertaintyHeads, features: np.ndarray) -> np.ndarray:
    """Reported values of every head, ``(H, N)`` float64, computed in chunks of rows."""
    outputs = np.empty((len(heads.names), features.shape[0]), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, features.shape[0], _HEAD_CHUNK_ROWS):
            chunk = torch.from_numpy(np.ascontiguousarray(features[start : start + _HEAD_CHUNK_ROWS]))
            outputs[:, start : start + chunk.shape[0]] = heads(chunk).double().numpy()
    return outputs


def store_models(reader: StoreReader) -> list[str]:
    """The models with rows in a store, sorted.

    Raises:
        InvalidInputError: If the store has no rows.
        StoreError: If the store cannot be read.
    """
    names = reader.models()
    if not names:
        raise InvalidInputError(f"the store {reader.root} has no rows; extract tokens into it first")
    return names
