"""What heads train on: :class:`TrainingData` and the by-image train/validation split.

:class:`TrainingData` holds the feature rows shared by all heads, and the rows and targets of each head.

Build it from a token store with :func:`usam.training.loading.load_training_data`, or from arrays with
:meth:`TrainingData.from_arrays`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES, Pairing, head_spec
from usam.heads import HEAD_INPUTS, SIGNAL_INPUT, TOKEN_INPUTS, input_width
from usam.store.schema import TOKEN_SIZE
from usam.training.seeds import Stream, derived_seed
from usam.validation import check_choice, check_float, check_int

DEFAULT_VALIDATION_FRACTION = 0.1


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

    Build it with :func:`~usam.training.loading.load_training_data` (from a token store) or :meth:`from_arrays`.

    Attributes:
        features: ``(R, len(inputs) * token_dim)`` float32 head inputs, one row per store row; may be a
            memory map.
        image_ids: ``(R,)`` int64 index of each row's image in :attr:`image_keys`.
        image_keys: ``(I,)`` sorted unique image names (``"<dataset>/<image_key>"`` for store data).
        heads: Per head name, its rows and targets; in the order of :data:`~usam.heads.HEAD_NAMES`.
        inputs: Which tokens the features concatenate, in order.
        pairing: Which mask token was paired with the best mask.
        token_dim: Size of one token (default: the features' width divided by the number of inputs).
        sam2_version: SAM2 version of the rows' models, if they all share one.
        source: Where the data came from (store path, models, pooled sizes, rows dropped, ...), for the heads'
            metadata.
        signal_normalization: For inputs with ``"signals"``, how the features' signal vectors were standardised
            (:meth:`usam.signals.SignalNormalization.to_dict`); the heads file keeps it for inference.
    """

    features: np.ndarray
    image_ids: np.ndarray
    image_keys: np.ndarray
    heads: dict[str, HeadRows]
    inputs: tuple[str, ...] = TOKEN_INPUTS
    pairing: Pairing | str = Pairing.TRUE
    token_dim: int | None = None
    sam2_version: str | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    signal_normalization: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        self.inputs = check_inputs(self.inputs)
        self.pairing = check_pairing(self.pairing)
        if self.features.ndim != 2:
            raise InvalidInputError(f"features must be a (rows, values) array, got shape {self.features.shape}")
        if self.token_dim is None:
            self.token_dim = _token_dim_of(self.features.shape[1], self.inputs)
        if self.features.shape[1] != input_width(self.inputs, self.token_dim):
            raise InvalidInputError(
                f"features must have shape (rows, {input_width(self.inputs, self.token_dim)}) for inputs "
                f"{list(self.inputs)} ({self.token_dim} values per token), got {self.features.shape}"
            )
        if (SIGNAL_INPUT in self.inputs) != (self.signal_normalization is not None):
            raise InvalidInputError(
                "training data with signal inputs need their signal_normalization (and only they have one)"
            )
        num_rows = self.features.shape[0]
        if self.image_ids.shape != (num_rows,):
            raise InvalidInputError(f"image_ids must have shape ({num_rows},), got {self.image_ids.shape}")
        if num_rows and not 0 <= self.image_ids.min() <= self.image_ids.max() < len(self.image_keys):
            raise InvalidInputError("image_ids must index image_keys")
        if not self.heads:
            raise InvalidInputError("training data must have at least one head")
        check_head_names(list(self.heads))
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
        token_dim: int | None = None,
        signal_normalization: Mapping[str, Sequence[float]] | None = None,
    ) -> TrainingData:
        """Training data from plain arrays, e.g. features computed elsewhere or synthetic ones.

        Args:
            features: ``(R, input_width(inputs, token_dim))`` head inputs (signal vectors already normalised).
            image_keys: ``(R,)`` the image of each row (any hashable, sortable values); rows of one image are
                kept on one side of the train/validation split.
            targets: Per head name, ``(R,)`` targets in [0, 1] (gap + 0.5 for gap heads); NaN marks a row
                the head does not use.
            inputs: Which tokens the features concatenate.
            pairing: The mask-token pairing the features were built with.
            source: Free-form description recorded in the heads' metadata.
            token_dim: Values per token (default: from the features' width; 256 for signal-only inputs).
            signal_normalization: How the signal vectors were normalised, for inputs with ``"signals"``.

        Returns:
            The training data.

        Raises:
            InvalidInputError: If shapes disagree, a head name is unknown or a target lies outside [0, 1].
        """
        features = np.asarray(features)
        if features.dtype != np.float32:
            features = features.astype(np.float32)
        inputs = check_inputs(inputs)
        if features.ndim != 2:
            raise InvalidInputError(f"features must be a (rows, values) array, got shape {features.shape}")
        keys = np.asarray(image_keys)
        if keys.shape != (features.shape[0],):
            raise InvalidInputError(f"image_keys must have one entry per feature row, got shape {keys.shape}")
        unique_keys, image_ids = np.unique(keys, return_inverse=True)
        heads = {}
        for name in check_head_names(list(targets)):
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
            pairing=check_pairing(pairing),
            token_dim=token_dim,
            source=dict(source or {"source": "arrays"}),
            signal_normalization=None if signal_normalization is None else dict(signal_normalization),
        )


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
    check_int(seed, "seed", minimum=0)
    check_validation_fraction(validation_fraction)
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
    generator = np.random.default_rng(derived_seed(seed, Stream.SPLIT))
    is_validation[generator.permutation(num_images)[:num_validation]] = True
    return is_validation


def target_column(head: str) -> str:
    """The store column a head learns from (``iou`` for the size heads), as :data:`usam.head_table.HEADS` says."""
    return head_spec(head).target_column


def check_validation_fraction(validation_fraction: float) -> float:
    """``validation_fraction`` checked to lie in [0, 1).

    Raises:
        InvalidInputError: If it does not.
    """
    value = check_float(validation_fraction, "validation_fraction", minimum=0, maximum=1)
    if value == 1:
        raise InvalidInputError("validation_fraction must be less than 1, got 1.0")
    return value


def check_pairing(pairing: Pairing | str) -> Pairing:
    """``pairing`` as a :class:`~usam.head_table.Pairing`."""
    return check_choice(Pairing, pairing, "pairing")


def check_inputs(inputs: Sequence[str]) -> tuple[str, ...]:
    """What heads read, as a tuple of distinct parts of :data:`~usam.heads.HEAD_INPUTS`, ``"signals"`` last.

    Raises:
        InvalidInputError: If the list is empty, repeats a part, names an unknown one or puts signals before a token.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = tuple(inputs)
    if (
        not inputs
        or len(set(inputs)) != len(inputs)
        or any(part not in HEAD_INPUTS for part in inputs)
        or (SIGNAL_INPUT in inputs and inputs[-1] != SIGNAL_INPUT)
    ):
        raise InvalidInputError(
            f"inputs must be a non-empty list of distinct parts of {list(HEAD_INPUTS)} with {SIGNAL_INPUT!r} last, "
            f"got {list(inputs)}"
        )
    return inputs


def _token_dim_of(width: int, inputs: tuple[str, ...]) -> int:
    """The token width that features of ``width`` values for ``inputs`` imply (SAM2's for signal-only inputs)."""
    tokens = sum(part != SIGNAL_INPUT for part in inputs)
    if not tokens:
        return TOKEN_SIZE
    rest = width - input_width([part for part in inputs if part == SIGNAL_INPUT], 0)
    if rest <= 0 or rest % tokens:
        raise InvalidInputError(f"features of {width} values do not fit the inputs {list(inputs)}")
    return rest // tokens


def check_head_names(names: Sequence[str]) -> list[str]:
    """Head names checked to be known, distinct and at least one, in canonical order.

    Raises:
        InvalidInputError: If a name is unknown or repeated, or none is given.
    """
    if isinstance(names, str):
        names = [names]
    for name in names:
        head_spec(name)
    if len(set(names)) != len(names) or not names:
        raise InvalidInputError(f"give each head once and at least one head, got {list(names)}")
    # Canonical order, so that files and reports list heads the same way however they were asked for.
    return [name for name in HEAD_NAMES if name in names]
