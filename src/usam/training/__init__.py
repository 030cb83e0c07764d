"""Training of the UncertainSAM heads on a token store: all heads at once, vectorised, reproducible.

A head reads ``concat(iou_token, mask_token)`` of one (image, object, model) row of a token store
(:mod:`usam.store`). The mask token is that of the multimask output that is best against the truth
(``k = argmax(mask_ious)``): token ``k + 1``, the one that produced the mask, with the ``"true"`` pairing, or
token ``k`` with the ``"as-released"`` pairing that the paper's released heads were trained with. What each
head learns, and from which rows:

* ``iou_<size>``: column ``iou`` of the rows of that SAM2 size (``iou_base_plus`` from ``*-base-plus``), or of
  all models' rows when sizes are pooled (as the paper does);
* ``iou_unsupervised`` and ``iou_dense_prompt``: columns ``unsupervised_iou`` and ``iou_dense_prompt``;
* ``model_gap``, ``prompt_gap``, ``task_gap``: ``clip(gap + 0.5, 0, 1)``, since a gap head reports
  ``sigmoid - 0.5``.

Rows whose target is null are dropped for that head only. The loss is the MSE of the sigmoid output and the
optimiser SGD with momentum and weight decay, with the paper's hyper-parameters (:data:`PAPER_DEFAULTS`) or
ones found by Optuna (:func:`tune_hyper_parameters`). Unlike the paper's code, rows are shuffled every epoch,
the validation set is split off by image (an image's rows are never on both sides) and the epoch with the best
validation loss is kept per head.

How the heads are trained together: all token rows sit in memory (or in a memory map) as one
``(rows, inputs)`` matrix, and each head has its own list of row indices and targets. Heads with the same batch
size and epoch count form a group, stacked in one :class:`~usam.heads.UncertaintyHeads`; learning rate,
momentum and weight decay are per-head tensors. Each epoch every head of a group draws its own permutation of
its training rows and takes ``ceil(rows / batch)`` SGD steps, exactly as if it were trained alone with a
shuffling data loader. The heads of a group are ordered by their number of training rows, largest first, so
that in step ``s`` the heads that still have batches left are a prefix of the stack: a step runs on weight
views ``[:k]``, without copies, and a head that has finished its epoch is neither computed nor updated. A
partial last batch is padded with zero-weight rows. Forward and backward passes are written out by hand with
preallocated buffers: autograd allocates every activation and gradient afresh and copies the transposed
weight gradients, which on CPU makes a step about 30 % slower (44 ms against 34 ms for nine heads at batch 189
on two cores); the matrix products left are the bulk of the work.

Randomness is derived per head from the seed and the head's name (initial weights, shuffling) and per run for
the split, so a head trains to the same weights whichever other heads are trained with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from usam.devices import Precision, select_device
from usam.errors import InvalidInputError, StoreError
from usam.extraction.targets import best_output
from usam.head_table import HEAD_NAMES, SIZE_HEADS, Pairing, is_gap_head
from usam.heads import TOKEN_INPUTS, HeadsMetadata, UncertaintyHeads
from usam.models import SIZES, get_model_spec
from usam.presets import TieRule
from usam.validation import check_choice

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "HPO_SEARCH_SPACE",
    "PAPER_DEFAULTS",
    "HeadRows",
    "HyperParameters",
    "TrainingData",
    "best_mask_token",
    "load_training_data",
    "paper_hyper_parameters",
    "regression_metrics",
    "split_by_image",
    "target_column",
    "train_from_store",
    "train_heads",
    "tune_hyper_parameters",
]

DEFAULT_VALIDATION_FRACTION = 0.1

DEFAULT_WEIGHT_DECAY = 1e-3

_TARGET_COLUMNS: dict[str, str] = {
    **dict.fromkeys(SIZE_HEADS, "iou"),
    "iou_unsupervised": "unsupervised_iou",
    "iou_dense_prompt": "iou_dense_prompt",
    "model_gap": "model_gap",
    "prompt_gap": "prompt_gap",
    "task_gap": "task_gap",
}

# Rows are read from the store in batches of this many rows: large enough for vectorised token handling,
# small enough that a batch of float32 mask tokens (4 KiB a row) stays well below 100 MB.
_READ_BATCH_ROWS = 16384
# Validation rows are predicted in chunks of this many rows per head, bounding the activations' memory.
_PREDICT_CHUNK_ROWS = 2048

# Words that make the random streams of one run independent of each other (see _derived_seed).
_STREAM_SPLIT, _STREAM_INIT, _STREAM_SHUFFLE = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    """How one head is trained: SGD with momentum and weight decay, mini-batches of ``batch_size`` rows.

    Attributes:
        lr: Learning rate.
        epochs: Number of passes over the head's training rows.
        batch_size: Rows per SGD step.
        momentum: SGD momentum, in [0, 1).
        weight_decay: L2 penalty added to the gradient, as ``torch.optim.SGD`` does (biases included).
    """

    lr: float
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float = DEFAULT_WEIGHT_DECAY

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)) or self.epochs < 1:
            problems.append(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        if (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, (int, np.integer))
            or self.batch_size < 1
        ):
            problems.append(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if problems:
            raise InvalidInputError("invalid hyper-parameters: " + "; ".join(problems))

    def to_dict(self) -> dict[str, float | int]:
        """The values as plain Python numbers, e.g. for JSON metadata."""
        return {
            "lr": float(self.lr),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "momentum": float(self.momentum),
            "weight_decay": float(self.weight_decay),
        }


def _paper(lr: float, epochs: int, batch_size: int, momentum: float) -> HyperParameters:
    return HyperParameters(lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum)


PAPER_DEFAULTS: dict[str, dict[str, HyperParameters]] = {
    "coco": {
        "default": _paper(0.0087130695692, 36, 189, 0.1639321491122),
        "iou_large": _paper(0.0087130695692, 35, 189, 0.1639321491122),
    },
    "ade20k": {
        "default": _paper(0.0013075788956, 79, 106, 0.8303298246553),
        "task_gap": _paper(0.0411114656149, 75, 208, 0.2459095045924),
        "prompt_gap": _paper(0.0024243301281, 70, 193, 0.8148493215442),
    },
    "sa-v": {
        "default": _paper(0.0087130695692, 9, 193, 0.1639321491122),
    },
    "davis": {
        "iou_tiny": _paper(0.0702736108729, 63, 151, 0.3075366146863),
        "iou_small": _paper(0.0024243301281, 70, 193, 0.8148493215442),
        "iou_base_plus": _paper(0.0016774068549, 70, 130, 0.8908015870842),
        "iou_large": _paper(0.0164839636621, 42, 232, 0.1234703782399),
        "iou_unsupervised": _paper(0.0343696361285, 57, 118, 0.8852591752),
        "iou_dense_prompt": _paper(0.0230261929437, 80, 62, 0.2442788582406),
        "model_gap": _paper(0.0039678611351, 77, 235, 0.1280011787627),
        "prompt_gap": _paper(0.0008989134277, 40, 154, 0.5382621589924),
        "task_gap": _paper(0.029406075389, 55, 158, 0.7093735218048),
    },
}
"""The paper's hyper-parameters per dataset: a ``"default"`` and per-head exceptions.

Copied from ``TRAINING_PARAMETERS`` in the authors' ``scripts/train_all_predictors.py`` (weight decay 1e-3
everywhere, as in their ``train``; their ``unsupervised_iou`` is our ``iou_unsupervised``); DAVIS lists all
nine heads, so it needs no default.
"""

HPO_SEARCH_SPACE: dict[str, tuple[float, float]] = {
    "lr": (1e-4, 0.1),
    "epochs": (5, 80),
    "batch_size": (16, 256),
    "momentum": (0.1, 0.9),
}
"""The paper's search space (``lr`` is searched on a log scale, ``epochs`` and ``batch_size`` as integers)."""

_DATASET_ALIASES = {"coco": "coco", "ade20k": "ade20k", "ade": "ade20k", "sav": "sa-v", "davis": "davis"}


def paper_hyper_parameters(dataset: str, heads: Sequence[str] = HEAD_NAMES) -> dict[str, HyperParameters]:
    """The paper's hyper-parameters for the given heads, tuned on one dataset.

    Args:
        dataset: ``"coco"``, ``"ade20k"``, ``"sa-v"`` or ``"davis"`` (case and dashes do not matter).
        heads: Head names.

    Returns:
        Hyper-parameters per head.

    Raises:
        InvalidInputError: If the dataset or a head name is unknown.
    """
    key = _DATASET_ALIASES.get(dataset.lower().replace("-", "").replace("_", ""))
    if key is None:
        raise InvalidInputError(
            f"no paper hyper-parameters for dataset {dataset!r}; use one of {sorted(PAPER_DEFAULTS)} "
            "(or tune them with hpo trials)"
        )
    table = PAPER_DEFAULTS[key]
    return {name: table.get(name, table.get("default")) for name in _check_head_names(heads)}


def target_column(head: str) -> str:
    """The store column a head learns from (``iou`` for the size heads)."""
    _check_head_names([head])
    return _TARGET_COLUMNS[head]


# Training data ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class HeadRows:
    """The rows one head trains and validates on, and what it learns from them.

    Attributes:
        rows: ``(n,)`` int64 indices into :attr:`TrainingData.features`, in a fixed order (sorted by dataset,
            image, object and model for data read from a store).
        targets: ``(n,)`` float32 targets in [0, 1], in the head's sigmoid space (gap + 0.5 for gap heads).
    """

    rows: np.ndarray
    targets: np.ndarray


@dataclasses.dataclass
class TrainingData:
    """Feature rows shared by all heads, and per head the rows it uses and its targets.

    Build it with :func:`load_training_data` (from a token store) or :meth:`from_arrays`.

    Attributes:
        features: ``(R, len(inputs) * token_dim)`` float32 head inputs, one row per store row; may be a
            memory map.
        image_ids: ``(R,)`` int64 index of each row's image in :attr:`image_keys`.
        image_keys: ``(I,)`` sorted unique image names (``"<dataset>/<image_key>"`` for store data).
        heads: Per head name, its rows and targets; in the order of :data:`~usam.heads.HEAD_NAMES`.
        inputs: Which tokens the features concatenate, in order.
        pairing: Which mask token was paired with the best mask (``"true"`` or ``"as-released"``).
        token_dim: Size of one token.
        sam2_version: SAM2 version of the rows' models, if they all share one.
        source: Where the data came from (store path, models, pooled sizes, ...), for the heads' metadata.
    """

    features: np.ndarray
    image_ids: np.ndarray
    image_keys: np.ndarray
    heads: dict[str, HeadRows]
    inputs: tuple[str, ...] = TOKEN_INPUTS
    pairing: Pairing | str = Pairing.TRUE
    token_dim: int = 256
    sam2_version: str | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = _check_inputs(self.inputs)
        _check_pairing(self.pairing)
        if self.features.ndim != 2 or self.features.shape[1] != self.token_dim * len(self.inputs):
            raise InvalidInputError(
                f"features must have shape (rows, {self.token_dim * len(self.inputs)}) for inputs "
                f"{list(self.inputs)} of {self.token_dim} values each, got {self.features.shape}"
            )
        num_rows = self.features.shape[0]
        if self.image_ids.shape != (num_rows,):
            raise InvalidInputError(f"image_ids must have shape ({num_rows},), got {self.image_ids.shape}")
        if num_rows and not 0 <= self.image_ids.min() <= self.image_ids.max() < len(self.image_keys):
            raise InvalidInputError("image_ids must index image_keys")
        if not self.heads:
            raise InvalidInputError("training data must have at least one head")
        _check_head_names(list(self.heads))
        for name, head in self.heads.items():
            if head.rows.ndim != 1 or head.rows.shape != head.targets.shape:
                raise InvalidInputError(f"head {name}: rows and targets must be 1-D arrays of equal length")
            if len(head.rows) and not 0 <= head.rows.min() <= head.rows.max() < num_rows:
                raise InvalidInputError(f"head {name}: row indices must lie in [0, {num_rows})")
            if not np.all((head.targets >= 0) & (head.targets <= 1)):
                raise InvalidInputError(f"head {name}: targets must lie in [0, 1] (IoUs, or gap + 0.5 for gap heads)")

    @property
    def head_names(self) -> list[str]:
        """The heads, in canonical order."""
        return list(self.heads)

    def head_features(self, name: str) -> np.ndarray:
        """A copy of the feature rows of one head, ``(n, inputs)``, in the order of its targets."""
        return np.asarray(self.features[self.heads[name].rows])

    def head_image_keys(self, name: str) -> np.ndarray:
        """The image of each row of one head."""
        return self.image_keys[self.image_ids[self.heads[name].rows]]

    def subset(self, names: Sequence[str]) -> TrainingData:
        """The same data restricted to some heads (features shared, not copied)."""
        missing = [name for name in names if name not in self.heads]
        if missing:
            raise InvalidInputError(f"head(s) {missing} are not in the training data; it has {self.head_names}")
        return dataclasses.replace(self, heads={name: self.heads[name] for name in HEAD_NAMES if name in names})

    @classmethod
    def from_arrays(
        cls,
        features: np.ndarray,
        image_keys: Sequence[Any] | np.ndarray,
        targets: Mapping[str, np.ndarray],
        *,
        inputs: Sequence[str] = TOKEN_INPUTS,
        pairing: Pairing | str = Pairing.TRUE,
        source: Mapping[str, Any] | None = None,
    ) -> TrainingData:
        """Training data from plain arrays, e.g. features computed elsewhere or synthetic ones.

        Args:
            features: ``(R, len(inputs) * token_dim)`` head inputs.
            image_keys: ``(R,)`` the image of each row (any hashable, sortable values); rows of one image are
                kept on one side of the train/validation split.
            targets: Per head name, ``(R,)`` targets in [0, 1] (gap + 0.5 for gap heads); NaN marks a row
                the head does not use.
            inputs: Which tokens the features concatenate.
            pairing: The mask-token pairing the features were built with.
            source: Free-form description recorded in the heads' metadata.

        Returns:
            The training data.

        Raises:
            InvalidInputError: If shapes disagree, a head name is unknown or a target lies outside [0, 1].
        """
        features = np.asarray(features)
        if features.dtype != np.float32:
            features = features.astype(np.float32)
        inputs = _check_inputs(inputs)
        if features.ndim != 2 or features.shape[1] % len(inputs):
            raise InvalidInputError(
                f"features must be (rows, {len(inputs)} x token size) for inputs {list(inputs)}, got {features.shape}"
            )
        keys = np.asarray(image_keys)
        if keys.shape != (features.shape[0],):
            raise InvalidInputError(f"image_keys must have one entry per feature row, got shape {keys.shape}")
        unique_keys, image_ids = np.unique(keys, return_inverse=True)
        heads = {}
        for name in _check_head_names(list(targets)):
            values = np.asarray(targets[name], dtype=np.float32)
            if values.shape != (features.shape[0],):
                raise InvalidInputError(f"targets[{name!r}] must have shape ({features.shape[0]},)")
            rows = np.flatnonzero(np.isfinite(values))
            heads[name] = HeadRows(rows=rows.astype(np.int64), targets=values[rows])
        return cls(
            features=features,
            image_ids=image_ids.astype(np.int64).reshape(-1),
            image_keys=unique_keys,
            heads=heads,
            inputs=inputs,
            pairing=_check_pairing(pairing),
            token_dim=features.shape[1] // len(inputs),
            source=dict(source or {"source": "arrays"}),
        )


def load_training_data(
    store: str | os.PathLike[str] | pa.Table,
    heads: Sequence[str] | None = None,
    *,
    pairing: Pairing | str = Pairing.TRUE,
    models: Sequence[str] | None = None,
    pool_sizes: bool = False,
    inputs: Sequence[str] = TOKEN_INPUTS,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrainingData:
    """Read the head inputs and targets of a token store.

    Args:
        store: A token store directory (:mod:`usam.store`), or a ``pyarrow.Table`` with its columns.
        heads: Heads to load (default: every head that has at least one row with a target).
        pairing: ``"true"`` (mask k is paired with token k + 1) or ``"as-released"`` (token k).
        models: Use only rows of these models (default: all models in the store). The ``iou_<size>`` heads use
            the ones of their size, unless ``pool_sizes``.
        pool_sizes: Train every ``iou_<size>`` head on the rows of all models, as the paper does.
        inputs: Tokens the heads read: both (default), or ``["iou_token"]`` / ``["mask_token"]`` for ablations.
        cache_dir: If given, the feature matrix is written to a file in this directory and memory-mapped, so
            that stores larger than the RAM can be trained on (the file is deleted once mapped, where the
            operating system allows it).

    Returns:
        The training data.

    Raises:
        StoreError: If the store cannot be read or lacks a needed column.
        InvalidInputError: If an argument is invalid, a model is not in the store or a requested head has no
            usable rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from usam.store import open_store, reading_errors

    pairing = _check_pairing(pairing)
    inputs = _check_inputs(inputs)
    requested = None if heads is None else _check_head_names(heads)
    wanted = list(HEAD_NAMES) if requested is None else requested

    if isinstance(store, pa.Table):
        dataset: ds.Dataset = ds.dataset(store)
        description = "in-memory table"
    else:
        store_path = Path(store).expanduser()
        dataset = open_store(store_path)
        description = str(store_path)

    token_columns = (["iou_token"] if "iou_token" in inputs else []) + (
        ["mask_tokens", "mask_ious"] if "mask_token" in inputs else []
    )
    key_columns = [name for name in ("dataset", "image_key", "object_id", "model") if name in dataset.schema.names]
    # Asked-for heads need their target column; by default, heads whose column is absent are skipped.
    required_targets = [_TARGET_COLUMNS[name] for name in requested or []]
    missing = sorted({"image_key", "model", *token_columns, *required_targets} - set(dataset.schema.names))
    if missing:
        raise StoreError(
            f"{description} lacks column(s) {missing} that training needs; is it a usam token store "
            f"(usam.store.row_schema)?"
        )
    token_dim = _token_dim(dataset.schema, inputs)

    with reading_errors(description):
        store_models = sorted(pc.unique(dataset.to_table(columns=["model"]).column("model")).to_pylist())
    if not store_models:
        raise InvalidInputError(f"{description} has no rows; extract tokens into it first")
    candidates = _check_models(models, store_models, description)
    head_models = {name: _models_of_head(name, candidates, pool_sizes) for name in wanted}
    head_models = {
        name: used for name, used in head_models.items() if used and _TARGET_COLUMNS[name] in dataset.schema.names
    }
    if requested is not None:
        missing_heads = [name for name in requested if name not in head_models]
        if missing_heads:
            raise InvalidInputError(
                f"no rows for head(s) {missing_heads}: the models {candidates} include no model of their size; "
                "add one with `models`, pass pool_sizes=True, or drop those heads"
            )
    if not head_models:
        raise InvalidInputError(f"none of the heads {wanted} has rows among the models {candidates}")
    needed_models = sorted({model for used in head_models.values() for model in used})
    target_columns = sorted({_TARGET_COLUMNS[name] for name in head_models})
    row_filter = None if needed_models == store_models else pc.field("model").isin(needed_models)

    with reading_errors(description):
        num_rows = dataset.count_rows(filter=row_filter)
    width = token_dim * len(inputs)
    features, cache_path = _allocate_features(num_rows, width, cache_dir)
    columns_kept: dict[str, list[pa.Array]] = {name: [] for name in [*key_columns, *target_columns]}
    position = 0
    with reading_errors(description):
        batches = dataset.to_batches(
            columns=sorted({*key_columns, *token_columns, *target_columns}),
            filter=row_filter,
            batch_size=_READ_BATCH_ROWS,
        )
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if position + batch.num_rows > num_rows:
                raise StoreError(f"{description} changed while it was being read; read it again when it is idle")
            table = pa.Table.from_batches([batch])
            fill_head_features(table, features[position : position + batch.num_rows], inputs, pairing)
            for name in columns_kept:
                columns_kept[name].extend(table.column(name).chunks)
            position += batch.num_rows
    if position != num_rows:
        raise StoreError(f"{description} changed while it was being read; read it again when it is idle")
    if cache_path is not None:
        features = _map_features(features, cache_path)

    columns = {
        name: pa.chunked_array(chunks, type=dataset.schema.field(name).type) for name, chunks in columns_kept.items()
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
    image_names = (
        pc.binary_join_element_wise(columns["dataset"], columns["image_key"], "/")
        if "dataset" in columns
        else columns["image_key"]
    )
    image_keys, image_ids = np.unique(image_names.to_numpy(zero_copy_only=False).astype(str), return_inverse=True)
    row_models = columns["model"].to_numpy(zero_copy_only=False).astype(str)

    head_rows: dict[str, HeadRows] = {}
    empty_heads = []
    for name, used in head_models.items():
        values = columns[_TARGET_COLUMNS[name]].to_numpy(zero_copy_only=False).astype(np.float64)
        usable = np.isin(row_models, used) & np.isfinite(values)
        rows = order[usable[order]]
        if rows.size == 0:
            empty_heads.append(name)
            continue
        targets = values[rows] + (0.5 if is_gap_head(name) else 0.0)
        head_rows[name] = HeadRows(rows=rows, targets=np.clip(targets, 0.0, 1.0).astype(np.float32))
    if requested is not None and empty_heads:
        raise InvalidInputError(
            f"head(s) {empty_heads} have no rows with a target among the models {candidates} (their target "
            "column is null there); drop them or use other models"
        )
    if not head_rows:
        raise InvalidInputError(f"none of the heads {wanted} has rows with a target in {description}")

    used_models = sorted({model for name in head_rows for model in head_models[name]})
    source = {
        "store": description,
        "models": used_models,
        "pool_sizes": bool(pool_sizes),
        "models_per_head": {name: head_models[name] for name in head_rows},
        "rows": {name: int(head.rows.size) for name, head in head_rows.items()},
    }
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
    return best + 1 if _check_pairing(pairing) == Pairing.TRUE else best


def fill_head_features(table: pa.Table, out: np.ndarray, inputs: tuple[str, ...], pairing: str) -> None:
    """Write the head inputs of every store row into ``out`` (N, len(inputs) * 256), in ``inputs`` order.

    The mask token is the one of the mask that is best against the truth, chosen by :func:`best_mask_token`.
    """
    from usam.store import token_arrays

    column = 0
    for part in inputs:
        if part == "iou_token":
            tokens = token_arrays(table, "iou_token")
        else:
            stacked = token_arrays(table, "mask_tokens")
            stacked = stacked.reshape(len(stacked), 4, -1)
            chosen = best_mask_token(token_arrays(table, "mask_ious", np.float32), pairing)
            tokens = stacked[np.arange(len(stacked)), chosen]
        out[:, column : column + tokens.shape[1]] = tokens
        column += tokens.shape[1]


def _token_dim(schema: pa.Schema, inputs: tuple[str, ...]) -> int:
    if "iou_token" in inputs:
        return schema.field("iou_token").type.list_size
    return schema.field("mask_tokens").type.list_size // 4


def _allocate_features(
    rows: int, width: int, cache_dir: str | os.PathLike[str] | None
) -> tuple[np.ndarray, Path | None]:
    if cache_dir is None:
        return np.empty((rows, width), dtype=np.float32), None
    directory = Path(cache_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
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


def _model_size(model: str) -> str | None:
    try:
        return get_model_spec(model).size
    except InvalidInputError:
        # Not a released name: fall back to its suffix, e.g. "my-finetune-large".
        return next((size for size in SIZES if model.endswith("-" + size)), None)


def _models_of_head(name: str, candidates: list[str], pool_sizes: bool) -> list[str]:
    if name in SIZE_HEADS and not pool_sizes:
        return [model for model in candidates if _model_size(model) == SIZE_HEADS[name]]
    return list(candidates)


def _common_sam2_version(models: Sequence[str]) -> str | None:
    versions = set()
    for model in models:
        try:
            versions.add(get_model_spec(model).version)
        except InvalidInputError:
            return None
    return versions.pop() if len(versions) == 1 else None


# Split -------------------------------------------------------------------------------------------------------


def split_by_image(
    data: TrainingData, validation_fraction: float = DEFAULT_VALIDATION_FRACTION, seed: int = 0
) -> np.ndarray:
    """Which images are held out for validation: a seeded random ``validation_fraction`` of them.

    All images of the data count, so every head sees the same split whichever heads are trained.

    Args:
        data: The training data.
        validation_fraction: Fraction of images held out, in [0, 1).
        seed: Seed of the split (non-negative).

    Returns:
        ``(I,)`` boolean array over :attr:`TrainingData.image_keys`: True for a validation image.

    Raises:
        InvalidInputError: If the fraction is out of range or leaves no image on one side.
    """
    _check_seed(seed)
    if not (math.isfinite(validation_fraction) and 0 <= validation_fraction < 1):
        raise InvalidInputError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}")
    num_images = len(data.image_keys)
    is_validation = np.zeros(num_images, dtype=bool)
    if validation_fraction == 0:
        return is_validation
    num_validation = max(1, round(validation_fraction * num_images))
    if num_validation >= num_images:
        raise InvalidInputError(
            f"cannot hold out {validation_fraction:.0%} of {num_images} image(s) for validation and train on "
            "the rest; use more images or validation_fraction=0"
        )
    generator = np.random.default_rng(_derived_seed(seed, _STREAM_SPLIT))
    is_validation[generator.permutation(num_images)[:num_validation]] = True
    return is_validation


# Training ------------------------------------------------------------------------------------------------------


def train_heads(
    data: TrainingData,
    *,
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    progress: bool = True,
    hidden_dim: int = 512,
    device: str | torch.device | None = None,
    precision: str = "float32",
) -> tuple[UncertaintyHeads, dict[str, Any]]:
    """Train all heads of the data together and keep, per head, the epoch with the best validation loss.

    Args:
        data: Inputs and targets, e.g. from :func:`load_training_data`.
        hyper_parameters: One set for all heads, or one per head name.
        seed: Seeds the split, the initial weights and the shuffling; the same seed gives the same weights.
        validation_fraction: Fraction of the images held out (0: train on everything and keep the last epoch).
        progress: Show a progress bar with the losses.
        hidden_dim: Width of the heads' hidden layers (512 in the paper).
        device: Where to train (default: CUDA when available, else the CPU). The features are copied there.
        precision: ``"float32"``, or ``"bfloat16"`` for mixed precision (see :class:`usam.devices.Precision`).

    Returns:
        The trained heads (in evaluation mode, on the CPU, in the data's head order) and the training report, which is
        also stored as ``heads.metadata.training``: data, pairing, hyper-parameters, best epoch, loss history
        and validation metrics (MSE, MAE, R², Pearson, on the sigmoid output) per head, seed, split.

    Raises:
        InvalidInputError: If hyper-parameters are missing for a head, a head has no training or no
            validation rows, or a head diverges (non-finite loss; lower its learning rate).
    """
    heads, report = _fit(data, hyper_parameters, seed, validation_fraction, progress, hidden_dim, device, precision)
    diverged = [name for name, entry in report["heads"].items() if entry["best_epoch"] is None]
    if diverged:
        detail = ", ".join(f"{name} (lr {report['heads'][name]['hyper_parameters']['lr']:.3g})" for name in diverged)
        raise InvalidInputError(
            f"training diverged (non-finite loss) for {detail}; lower the learning rate of these heads"
        )
    return heads, report


@dataclasses.dataclass
class _HeadPlan:
    """One head's share of a run: its hyper-parameters and its rows and targets, split by image."""

    name: str
    hyper: HyperParameters
    train_rows: np.ndarray
    train_targets: np.ndarray
    validation_rows: np.ndarray
    validation_targets: np.ndarray


def _fit(
    data: TrainingData,
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters,
    seed: int,
    validation_fraction: float,
    progress: bool,
    hidden_dim: int,
    device: str | torch.device | None = None,
    precision: str = "float32",
) -> tuple[UncertaintyHeads, dict[str, Any]]:
    started = time.perf_counter()
    _check_seed(seed)
    _check_precision(precision)
    device = select_device(device)
    if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
        raise InvalidInputError(f"hidden_dim must be a whole number >= 1, got {hidden_dim!r}")
    names = data.head_names
    hyper = _hyper_parameters_per_head(hyper_parameters, names)
    is_validation_image = split_by_image(data, validation_fraction, seed)
    plans = []
    for name in names:
        head = data.heads[name]
        held_out = is_validation_image[data.image_ids[head.rows]]
        plan = _HeadPlan(
            name=name,
            hyper=hyper[name],
            train_rows=head.rows[~held_out],
            train_targets=head.targets[~held_out],
            validation_rows=head.rows[held_out],
            validation_targets=head.targets[held_out],
        )
        if plan.train_rows.size == 0 or (validation_fraction > 0 and plan.validation_rows.size == 0):
            side = "training" if plan.train_rows.size == 0 else "validation"
            raise InvalidInputError(
                f"head {name} has no {side} rows: its {head.rows.size} row(s) come from too few images for a "
                f"{validation_fraction:.0%} validation split; add images or change validation_fraction"
            )
        plans.append(plan)

    features = _features_tensor(data.features).to(device)
    groups: dict[tuple[int, int], list[_HeadPlan]] = {}
    for plan in plans:
        groups.setdefault((plan.hyper.batch_size, plan.hyper.epochs), []).append(plan)
    total_steps = sum(
        epochs * math.ceil(max(plan.train_rows.size for plan in members) / batch)
        for (batch, epochs), members in groups.items()
    )
    from tqdm.auto import tqdm

    results: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    with tqdm(total=total_steps, desc=f"training {len(names)} head(s)", unit="step", disable=not progress) as bar:
        for group_index, key in enumerate(sorted(groups)):
            members = sorted(groups[key], key=lambda plan: (-plan.train_rows.size, HEAD_NAMES.index(plan.name)))
            label = f"group {group_index + 1}/{len(groups)}" if len(groups) > 1 else ""
            group_results, group_module = _train_group(members, data, features, seed, hidden_dim, precision, bar, label)
            results.update(group_results)
            for plan in members:
                states[plan.name] = group_module.head_state_dict(plan.name)

    metadata = HeadsMetadata(
        names=names,
        token_dim=data.token_dim,
        hidden_dim=hidden_dim,
        inputs=list(data.inputs),
        pairing=data.pairing,
        sam2_version=data.sam2_version,
    )
    heads = UncertaintyHeads(metadata)
    for name in names:
        heads.load_head_state_dict(name, states[name])
    heads.eval()
    heads.requires_grad_(False)

    from usam import __version__

    report: dict[str, Any] = {
        "trainer": f"usam {__version__} (usam.training)",
        "data": {
            **data.source,
            "rows": {name: int(data.heads[name].rows.size) for name in names},
            "train_rows": {plan.name: int(plan.train_rows.size) for plan in plans},
            "validation_rows": {plan.name: int(plan.validation_rows.size) for plan in plans},
        },
        "pairing": data.pairing,
        "inputs": list(data.inputs),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "split": "by image",
        "train_images": int((~is_validation_image).sum()),
        "validation_images": int(is_validation_image.sum()),
        "loss": "MSE of the sigmoid output (gap heads: target clip(gap + 0.5, 0, 1))",
        "optimizer": "SGD with momentum and weight decay, rows reshuffled every epoch",
        "precision": precision,
        "device": str(device),
        "heads": {name: results[name] for name in names},
        "seconds": round(time.perf_counter() - started, 3),
    }
    heads.metadata.training = report
    return heads, report


def _train_group(
    members: list[_HeadPlan],
    data: TrainingData,
    features: torch.Tensor,
    seed: int,
    hidden_dim: int,
    precision: str,
    bar: Any,
    label: str,
) -> tuple[dict[str, dict[str, Any]], UncertaintyHeads]:
    """Train heads sharing batch size and epoch count; ``members`` sorted by training rows, largest first."""
    batch_size, epochs = members[0].hyper.batch_size, members[0].hyper.epochs
    names = [plan.name for plan in members]
    module = UncertaintyHeads(
        HeadsMetadata(names=names, token_dim=data.token_dim, hidden_dim=hidden_dim, inputs=list(data.inputs))
    )
    for plan in members:
        module.load_head_state_dict(plan.name, _initial_head_state(plan.name, data, hidden_dim, seed))
    module.to(features.device)
    workspace = _GroupWorkspace(module, features, batch_size, members, precision)
    shufflers = [
        torch.Generator().manual_seed(_derived_seed(seed, _STREAM_SHUFFLE, HEAD_NAMES.index(plan.name)))
        for plan in members
    ]
    train_rows = [torch.from_numpy(plan.train_rows) for plan in members]
    train_targets = [torch.from_numpy(plan.train_targets) for plan in members]
    steps_per_head = [math.ceil(plan.train_rows.size / batch_size) for plan in members]
    num_steps = steps_per_head[0]
    # Number of heads that still have a batch in step s: a prefix, since members are sorted by row count.
    active_heads = [sum(steps > step for steps in steps_per_head) for step in range(num_steps)]
    has_validation = members[0].validation_rows.size > 0

    train_history: list[list[float | None]] = [[] for _ in members]
    validation_history: list[list[float | None]] = [[] for _ in members]
    best_loss = [math.inf] * len(members)
    best_epoch: list[int | None] = [None] * len(members)
    best_state: list[dict[str, torch.Tensor] | None] = [None] * len(members)
    diverged = [False] * len(members)

    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            batches = _epoch_batches(train_rows, train_targets, shufflers, batch_size, num_steps)
            row_index, targets, weights = (tensor.to(features.device) for tensor in batches)
            loss_sums = torch.zeros(len(members), dtype=_loss_dtype(features.device), device=features.device)
            for step in range(num_steps):
                active = active_heads[step]
                losses = workspace.step(
                    active, row_index[step, :active], targets[step, :active], weights[step, :active]
                )
                loss_sums[:active] += losses
                bar.update(1)
                if step % 50 == 0 or step == num_steps - 1:
                    done_steps = torch.tensor([min(step + 1, s) for s in steps_per_head], device=features.device)
                    running = (loss_sums / done_steps).mean().item()
                    bar.set_postfix_str(f"{label} epoch {epoch}/{epochs} loss {running:.4f}".strip(), refresh=False)
            train_loss = (loss_sums.cpu().double() / torch.tensor(steps_per_head, dtype=torch.float64)).tolist()
            if has_validation:
                predictions = _predict(module, features, [plan.validation_rows for plan in members])
                losses_now = [
                    float(np.mean((prediction - plan.validation_targets.astype(np.float64)) ** 2))
                    for prediction, plan in zip(predictions, members, strict=True)
                ]
            else:
                losses_now = [float(loss) for loss in train_loss]
            for index, plan in enumerate(members):
                train_history[index].append(_finite_or_none(train_loss[index]))
                if has_validation:
                    validation_history[index].append(_finite_or_none(losses_now[index]))
                if not math.isfinite(train_loss[index]):
                    diverged[index] = True
                # Without validation the last finite epoch is kept, as the paper's code keeps the last one.
                improved = losses_now[index] < best_loss[index] if has_validation else not diverged[index]
                if math.isfinite(losses_now[index]) and improved and not diverged[index]:
                    best_loss[index] = losses_now[index]
                    best_epoch[index] = epoch
                    best_state[index] = module.head_state_dict(plan.name)
            if has_validation:
                bar.set_postfix_str(
                    f"{label} epoch {epoch}/{epochs} loss {np.mean(train_loss):.4f} "
                    f"val {np.mean(losses_now):.4f}".strip()
                )
            if all(diverged):
                bar.update(num_steps * (epochs - epoch))
                break

    for index, plan in enumerate(members):
        if best_state[index] is not None:
            module.load_head_state_dict(plan.name, best_state[index])
    metrics: list[dict[str, float | None] | None] = [None] * len(members)
    if has_validation:
        predictions = _predict(module, features, [plan.validation_rows for plan in members])
        metrics = [
            regression_metrics(prediction, plan.validation_targets)
            for prediction, plan in zip(predictions, members, strict=True)
        ]
    results = {
        plan.name: {
            "hyper_parameters": plan.hyper.to_dict(),
            "best_epoch": best_epoch[index],
            "best_validation_mse": _finite_or_none(best_loss[index]) if has_validation else None,
            "validation": metrics[index],
            "train_loss_per_epoch": train_history[index],
            "validation_mse_per_epoch": validation_history[index] if has_validation else None,
            "train_rows": int(plan.train_rows.size),
            "validation_rows": int(plan.validation_rows.size),
        }
        for index, plan in enumerate(members)
    }
    return results, module


def _epoch_batches(
    train_rows: list[torch.Tensor],
    train_targets: list[torch.Tensor],
    shufflers: list[torch.Generator],
    batch_size: int,
    num_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's batches of all heads of a group as ``(steps, heads, batch)`` row indices, targets, weights.

    Each head takes its own permutation of its rows. A partial last batch is padded with the head's first row
    at weight 0; the weights of a batch's real rows are 1 / (their number), so each step's loss is the mean
    over its real rows, as with a data loader without ``drop_last``. Entries past a head's last step are never
    read (the head is not among the active prefix there).
    """
    num_heads = len(train_rows)
    row_index = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.int64)
    targets = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.float32)
    weights = torch.zeros(num_steps, num_heads, batch_size, dtype=torch.float32)
    for head, (rows, values, shuffler) in enumerate(zip(train_rows, train_targets, shufflers, strict=True)):
        count = rows.numel()
        steps = math.ceil(count / batch_size)
        order = torch.randperm(count, generator=shuffler)
        padded = steps * batch_size
        head_rows = torch.full((padded,), int(rows[0]), dtype=torch.int64)
        head_rows[:count] = rows[order]
        head_targets = torch.zeros(padded, dtype=torch.float32)
        head_targets[:count] = values[order]
        head_weights = torch.zeros(padded, dtype=torch.float32)
        head_weights[:count] = 1.0 / batch_size
        last = count - (steps - 1) * batch_size
        head_weights[(steps - 1) * batch_size : count] = 1.0 / last
        row_index[:steps, head] = head_rows.view(steps, batch_size)
        targets[:steps, head] = head_targets.view(steps, batch_size)
        weights[:steps, head] = head_weights.view(steps, batch_size)
    return row_index, targets, weights


class _GroupWorkspace:
    """Hand-written forward, backward and SGD step of a group of heads, on preallocated buffers.

    Computes, for the first ``k`` heads of the group, exactly what autograd and ``torch.optim.SGD`` (momentum,
    no dampening, weight decay on all parameters) would for the loss ``sum_h sum_b w_hb (sigmoid(z_hb) -
    y_hb)^2``; the heads share no parameters, so each head gets the gradient of its own weighted mean.

    With ``precision="bfloat16"`` the inputs, the hidden activations and their gradients are kept in bfloat16
    and the two 512-wide layers multiply bfloat16 copies of their weights, refreshed every step; the weights,
    their gradients, the SGD state, the last layer and the loss stay float32, as under ``torch.autocast``.
    """

    def __init__(
        self,
        module: UncertaintyHeads,
        features: torch.Tensor,
        batch_size: int,
        members: Sequence[_HeadPlan],
        precision: str = "float32",
    ) -> None:
        self.features = features
        self.batch_size = batch_size
        num_heads, hidden, inputs = module.weight1.shape
        device, compute = features.device, _check_precision(precision).dtype
        self.parameters = [
            parameter.detach()
            for parameter in (module.weight1, module.bias1, module.weight2, module.bias2, module.weight3, module.bias3)
        ]
        self.gradients = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.velocities = [torch.zeros_like(parameter) for parameter in self.parameters]
        self.learning_rates = self._per_head([plan.hyper.lr for plan in members], device)
        self.momenta = self._per_head([plan.hyper.momentum for plan in members], device)
        self.weight_decays = self._per_head([plan.hyper.weight_decay for plan in members], device)
        self.gathered = torch.empty(num_heads * batch_size, inputs, device=device)
        self.mixed = compute != torch.float32
        self.loss_dtype = _loss_dtype(device)

        # What the two wide layers read and write, in the compute type: the inputs, weight1 and weight2 and
        # their gradients. In float32 these are the float32 tensors themselves, so nothing is copied.
        def in_compute_type(tensor: torch.Tensor) -> torch.Tensor:
            return torch.empty_like(tensor, dtype=compute) if self.mixed else tensor

        self.inputs = in_compute_type(self.gathered)
        self.compute_weights = [in_compute_type(self.parameters[index]) for index in (0, 2)]
        self.compute_gradients = [in_compute_type(self.gradients[index]) for index in (0, 2)]
        activations = (num_heads, batch_size, hidden)
        self.hidden1 = torch.empty(activations, dtype=compute, device=device)
        self.hidden2 = torch.empty(activations, dtype=compute, device=device)
        self.grad_hidden1 = torch.empty(activations, dtype=compute, device=device)
        self.grad_hidden2 = torch.empty(activations, dtype=compute, device=device)
        self.relu_slope = torch.empty(activations, dtype=compute, device=device)

    @staticmethod
    def _per_head(values: list[float], device: torch.device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device)

    def step(self, k: int, row_index: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One SGD step of the first ``k`` heads on ``(k, batch)`` rows; returns their ``(k,)`` batch losses."""
        batch = self.batch_size
        gathered = self.gathered[: k * batch]
        torch.index_select(self.features, 0, row_index.reshape(-1), out=gathered)
        inputs = self.inputs[: k * batch]
        if self.mixed:
            inputs.copy_(gathered)
        inputs = inputs.view(k, batch, -1)
        weight1, bias1, weight2, bias2, weight3, bias3 = (parameter[:k] for parameter in self.parameters)
        if self.mixed:
            for compute_weight, weight in zip(self.compute_weights, (weight1, weight2), strict=True):
                compute_weight[:k].copy_(weight)
        weight1, weight2 = (compute_weight[:k] for compute_weight in self.compute_weights)
        hidden1, hidden2 = self.hidden1[:k], self.hidden2[:k]

        # Forward, as UncertaintyHeads.logits computes it, but into the preallocated buffers.
        torch.bmm(inputs, weight1.transpose(1, 2), out=hidden1)
        hidden1.add_(bias1.unsqueeze(1)).relu_()
        torch.bmm(hidden1, weight2.transpose(1, 2), out=hidden2)
        hidden2.add_(bias2.unsqueeze(1)).relu_()
        last_hidden = hidden2.float()  # the same tensor in float32 mode
        logits = torch.bmm(last_hidden, weight3.unsqueeze(2)).squeeze(2).add_(bias3.unsqueeze(1))
        predictions = torch.sigmoid(logits)
        errors = predictions - targets
        losses = (weights * errors * errors).sum(1)

        # Backward: d loss / d logit = 2 w (p - y) p (1 - p), then through the layers.
        grad_logits = 2 * weights * errors * predictions * (1 - predictions)
        grad_weight1, grad_bias1, grad_weight2, grad_bias2, grad_weight3, grad_bias3 = (
            gradient[:k] for gradient in self.gradients
        )
        compute_grad_weight1, compute_grad_weight2 = (gradient[:k] for gradient in self.compute_gradients)
        torch.bmm(grad_logits.unsqueeze(1), last_hidden, out=grad_weight3.unsqueeze(1))
        torch.sum(grad_logits, 1, out=grad_bias3)
        relu_slope = self.relu_slope[:k]
        grad_hidden2 = self.grad_hidden2[:k]
        torch.mul(grad_logits.unsqueeze(2), weight3.unsqueeze(1), out=grad_hidden2)
        # sign(relu(z)) is the ReLU's slope (0 where z <= 0, as autograd has it), written into a reused buffer.
        grad_hidden2.mul_(torch.sign(hidden2, out=relu_slope))
        torch.bmm(grad_hidden2.transpose(1, 2), hidden1, out=compute_grad_weight2)
        if self.mixed:
            grad_weight2.copy_(compute_grad_weight2)
        torch.sum(grad_hidden2, 1, dtype=torch.float32, out=grad_bias2)
        grad_hidden1 = self.grad_hidden1[:k]
        torch.bmm(grad_hidden2, weight2, out=grad_hidden1)
        grad_hidden1.mul_(torch.sign(hidden1, out=relu_slope))
        torch.bmm(grad_hidden1.transpose(1, 2), inputs, out=compute_grad_weight1)
        if self.mixed:
            grad_weight1.copy_(compute_grad_weight1)
        torch.sum(grad_hidden1, 1, dtype=torch.float32, out=grad_bias1)

        # SGD as torch.optim.SGD: d = g + wd p; v = momentum v + d (v starts at 0, so v = d at first); p -= lr v.
        for parameter, gradient, velocity in zip(self.parameters, self.gradients, self.velocities, strict=True):
            shape = (k,) + (1,) * (parameter.dim() - 1)
            gradient = gradient[:k]
            velocity = velocity[:k]
            parameter = parameter[:k]
            gradient.addcmul_(parameter, self.weight_decays[:k].view(shape))
            velocity.mul_(self.momenta[:k].view(shape)).add_(gradient)
            parameter.addcmul_(velocity, self.learning_rates[:k].view(shape), value=-1.0)
        return losses.to(self.loss_dtype)


def _predict(module: UncertaintyHeads, features: torch.Tensor, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sigmoid outputs of each head of ``module`` on its own rows (float64)."""
    outputs = [np.empty(len(head_rows), dtype=np.float64) for head_rows in rows]
    longest = max(len(head_rows) for head_rows in rows)
    with torch.no_grad():
        for start in range(0, longest, _PREDICT_CHUNK_ROWS):
            stop = min(start + _PREDICT_CHUNK_ROWS, longest)
            index = torch.zeros(len(rows), stop - start, dtype=torch.int64)
            for head, head_rows in enumerate(rows):
                chunk = head_rows[start:stop]
                index[head, : len(chunk)] = torch.from_numpy(chunk)
            values = torch.sigmoid(module.logits(features[index.to(features.device)])).cpu().double().numpy()
            for head, head_rows in enumerate(rows):
                count = max(0, min(stop, len(head_rows)) - start)
                outputs[head][start : start + count] = values[head, :count]
    return outputs


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """MSE, MAE, R² and Pearson correlation of predictions against targets (None where undefined).

    Args:
        predictions: ``(n,)`` predicted values.
        targets: ``(n,)`` true values.

    Returns:
        ``{"mse", "mae", "r2", "pearson", "num_rows"}``.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    errors = predictions - targets
    mse = float(np.mean(errors**2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    r2 = 1.0 - float(np.sum(errors**2)) / total if total > 0 else None
    pearson = None
    if predictions.std() > 0 and targets.std() > 0:
        pearson = float(np.corrcoef(predictions, targets)[0, 1])
    return {
        "mse": _finite_or_none(mse),
        "mae": _finite_or_none(float(np.mean(np.abs(errors)))),
        "r2": _finite_or_none(r2),
        "pearson": _finite_or_none(pearson),
        "num_rows": int(targets.size),
    }


def _initial_head_state(name: str, data: TrainingData, hidden_dim: int, seed: int) -> dict[str, torch.Tensor]:
    # Each head is initialised from its own stream, so its weights do not depend on the other heads trained.
    single = UncertaintyHeads(
        HeadsMetadata(names=[name], token_dim=data.token_dim, hidden_dim=hidden_dim, inputs=list(data.inputs))
    )
    single.reset_parameters(torch.Generator().manual_seed(_derived_seed(seed, _STREAM_INIT, HEAD_NAMES.index(name))))
    return single.head_state_dict(name)


def _features_tensor(features: np.ndarray) -> torch.Tensor:
    if features.dtype != np.float32:
        features = features.astype(np.float32)
    array = np.ascontiguousarray(features) if not isinstance(features, np.memmap) else features
    with warnings.catch_warnings():
        # A read-only array (e.g. a user's np.load(mmap_mode="r")) is shared as is: it is only ever read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _hyper_parameters_per_head(
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters, names: Sequence[str]
) -> dict[str, HyperParameters]:
    if isinstance(hyper_parameters, HyperParameters):
        return dict.fromkeys(names, hyper_parameters)
    missing = [name for name in names if name not in hyper_parameters]
    if missing:
        raise InvalidInputError(
            f"no hyper-parameters for head(s) {missing}; pass one HyperParameters for all heads or one per head"
        )
    wrong = [name for name in names if not isinstance(hyper_parameters[name], HyperParameters)]
    if wrong:
        raise InvalidInputError(f"hyper-parameters of {wrong} must be HyperParameters instances")
    return {name: hyper_parameters[name] for name in names}


# Hyper-parameter optimisation --------------------------------------------------------------------------------


def tune_hyper_parameters(
    data: TrainingData,
    head: str,
    trials: int,
    seed: int = 0,
    *,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    hidden_dim: int = 512,
    progress: bool = False,
    device: str | torch.device | None = None,
    precision: str = "float32",
) -> HyperParameters:
    """Search the paper's space (:data:`HPO_SEARCH_SPACE`) for one head with Optuna's seeded TPE sampler.

    Every trial trains the head alone on the same by-image split and scores its best validation MSE.

    Args:
        data: Training data containing the head.
        head: The head to tune.
        trials: Number of trials (at least 1).
        seed: Seeds the sampler, the split and each trial's training.
        validation_fraction: Fraction of images held out (must be > 0).
        weight_decay: Weight decay of every trial (not searched, as in the paper).
        hidden_dim: Width of the heads' hidden layers.
        progress: Show a progress bar over the trials.
        device: Where to train (see :func:`train_heads`).
        precision: ``"float32"`` or ``"bfloat16"`` (see :class:`usam.devices.Precision`).

    Returns:
        The best trial's hyper-parameters.

    Raises:
        InvalidInputError: If ``trials`` < 1, the head is not in the data or the validation fraction is 0.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise InvalidInputError(f"trials must be a whole number >= 1, got {trials!r}")
    if validation_fraction <= 0:
        raise InvalidInputError("hyper-parameter search needs validation data; use validation_fraction > 0")
    single = data.subset([head])
    try:
        import optuna
    except ImportError as error:
        raise InvalidInputError("hyper-parameter search needs optuna: pip install 'usam[train]'") from error

    def objective(trial: optuna.Trial) -> float:
        hyper = HyperParameters(
            lr=trial.suggest_float("lr", *HPO_SEARCH_SPACE["lr"], log=True),
            epochs=trial.suggest_int("epochs", *map(int, HPO_SEARCH_SPACE["epochs"])),
            batch_size=trial.suggest_int("batch_size", *map(int, HPO_SEARCH_SPACE["batch_size"])),
            momentum=trial.suggest_float("momentum", *HPO_SEARCH_SPACE["momentum"]),
            weight_decay=weight_decay,
        )
        _, report = _fit(single, hyper, seed, validation_fraction, False, hidden_dim, device, precision)
        best = report["heads"][head]["best_validation_mse"]
        # A diverged trial is the worst possible rather than a failure, so the search goes on.
        return math.inf if best is None else best

    from tqdm.auto import tqdm

    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        with tqdm(total=trials, desc=f"tuning {head}", unit="trial", disable=not progress) as bar:

            def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.update(1)
                bar.set_postfix_str(f"best val MSE {study.best_value:.5f}")

            study.optimize(objective, n_trials=trials, callbacks=[report_trial])
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
    best = study.best_params
    return HyperParameters(
        lr=float(best["lr"]),
        epochs=int(best["epochs"]),
        batch_size=int(best["batch_size"]),
        momentum=float(best["momentum"]),
        weight_decay=weight_decay,
    )


# End to end ------------------------------------------------------------------------------------------------------


def train_from_store(
    store: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    heads: Sequence[str] | None = None,
    pairing: Pairing | str = Pairing.TRUE,
    models: Sequence[str] | None = None,
    hpo_trials: int = 0,
    dataset_defaults: str = "coco",
    seed: int = 0,
    pool_sizes: bool = False,
    progress: bool = True,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    inputs: Sequence[str] = TOKEN_INPUTS,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    precision: str = "float32",
) -> Path:
    """Train heads on a token store and write them to a heads file (:func:`usam.load_heads` reads it).

    Args:
        store: The token store directory.
        out_path: The heads file to write (``.safetensors``).
        heads: Heads to train (default: every head with rows in the store).
        pairing: ``"true"`` or ``"as-released"``.
        models: Use only rows of these models (default: all in the store).
        hpo_trials: If > 0, tune each head's hyper-parameters with this many Optuna trials first; otherwise the
            paper's for ``dataset_defaults``.
        dataset_defaults: ``"coco"``, ``"ade20k"``, ``"sa-v"`` or ``"davis"``: whose paper hyper-parameters.
        seed: Seed of split, initialisation, shuffling and search.
        pool_sizes: Train the ``iou_<size>`` heads on all models' rows.
        progress: Show progress bars.
        validation_fraction: Fraction of images held out for validation.
        inputs: Tokens the heads read (ablations: ``["iou_token"]`` or ``["mask_token"]``).
        cache_dir: Memory-map the features from a file in this directory (for stores larger than the RAM).
        device: Where to train (default: CUDA when available, else the CPU).
        precision: ``"float32"``, or ``"bfloat16"`` for mixed precision (see :class:`usam.devices.Precision`).

    Returns:
        The path of the written heads file.

    Raises:
        StoreError: If the store cannot be read.
        InvalidInputError: If an argument is invalid or the data do not allow training.
    """
    if isinstance(hpo_trials, bool) or not isinstance(hpo_trials, int) or hpo_trials < 0:
        raise InvalidInputError(f"hpo_trials must be a whole number >= 0, got {hpo_trials!r}")
    _check_precision(precision)
    device = select_device(device)  # before reading the store, so that a wrong device fails at once
    data = load_training_data(
        store, heads, pairing=pairing, models=models, pool_sizes=pool_sizes, inputs=inputs, cache_dir=cache_dir
    )
    # Checked even when a search replaces them, so that a misspelt dataset name is reported either way.
    hyper = paper_hyper_parameters(dataset_defaults, data.head_names)
    hpo_record: dict[str, Any] = {}
    for name in data.head_names if hpo_trials else []:
        hyper[name] = tune_hyper_parameters(
            data,
            name,
            hpo_trials,
            seed,
            validation_fraction=validation_fraction,
            progress=progress,
            device=device,
            precision=precision,
        )
        hpo_record[name] = hyper[name].to_dict()
    heads_module, report = train_heads(
        data,
        hyper_parameters=hyper,
        seed=seed,
        validation_fraction=validation_fraction,
        progress=progress,
        device=device,
        precision=precision,
    )
    if hpo_trials:
        report["hyper_parameter_source"] = {
            "method": "optuna TPESampler",
            "trials_per_head": hpo_trials,
            "seed": seed,
            "search_space": {
                "lr": [*HPO_SEARCH_SPACE["lr"], "log"],
                "epochs": list(HPO_SEARCH_SPACE["epochs"]),
                "batch_size": list(HPO_SEARCH_SPACE["batch_size"]),
                "momentum": list(HPO_SEARCH_SPACE["momentum"]),
            },
            "objective": "best validation MSE",
            "chosen": hpo_record,
        }
    else:
        report["hyper_parameter_source"] = {"method": "paper defaults", "dataset": dataset_defaults}
    heads_module.metadata.training = report
    return heads_module.save(out_path)


# Helpers ---------------------------------------------------------------------------------------------------------


def _derived_seed(seed: int, *words: int) -> int:
    # SeedSequence mixes the words well, so nearby seeds and heads give unrelated streams.
    return int(np.random.SeedSequence([seed, *words]).generate_state(1, dtype=np.uint64)[0])


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative whole number, got {seed!r}")


def _check_precision(precision: str) -> Precision:
    return check_choice(Precision, precision, "precision")


def _loss_dtype(device: torch.device) -> torch.dtype:
    """Losses are summed in float64 where the device has it (Apple's MPS does not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_pairing(pairing: str) -> Pairing:
    return check_choice(Pairing, pairing, "pairing")


def _check_inputs(inputs: Sequence[str]) -> tuple[str, ...]:
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = tuple(inputs)
    if not inputs or len(set(inputs)) != len(inputs) or any(part not in TOKEN_INPUTS for part in inputs):
        raise InvalidInputError(
            f"inputs must be a non-empty list of distinct tokens from {list(TOKEN_INPUTS)}, got {list(inputs)}"
        )
    return inputs


def _check_head_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in HEAD_NAMES]
    if unknown:
        raise InvalidInputError(f"unknown head(s) {unknown}; the heads are {list(HEAD_NAMES)}")
    if len(set(names)) != len(names) or not names:
        raise InvalidInputError(f"give each head once and at least one head, got {list(names)}")
    # Canonical order, so that files and reports list heads the same way however they were asked for.
    return [name for name in HEAD_NAMES if name in names]


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/inf; the metadata records an undefined value as null.
    return float(value) if value is not None and math.isfinite(value) else None
