"""How heads are trained: :class:`HyperParameters`, the paper's values per dataset and the search space of the paper.

Which paper defaults fit a store is inferred from its ``dataset`` column by :func:`defaults_for_datasets`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.validation import StrEnum, check_choice, check_float, check_int

DEFAULT_WEIGHT_DECAY = 1e-3


class Optimizer(StrEnum):
    """How a head's weights are updated."""

    SGD = "sgd"
    """SGD with momentum and weight decay added to the gradient, as ``torch.optim.SGD`` (the paper's)."""
    ADAMW = "adamw"
    """AdamW as ``torch.optim.AdamW`` (betas 0.9, 0.999, eps 1e-8, decoupled weight decay); ``momentum`` unused."""


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    """How one head is trained: mini-batches of ``batch_size`` rows, by default the paper's SGD at a constant rate.

    The defaults of the last four fields are the paper's recipe; :data:`usam.training.recipes.USAM_HYPER_PARAMETERS`
    sets them otherwise.

    Attributes:
        lr: Learning rate (the peak rate with a warm-up or a cosine schedule).
        epochs: Number of passes over the head's training rows (the most, with ``patience``).
        batch_size: Rows per step.
        momentum: SGD momentum, in [0, 1) (AdamW ignores it).
        weight_decay: L2 penalty added to the gradient, as ``torch.optim.SGD`` does (biases included); with AdamW
            the decoupled decay of ``torch.optim.AdamW``.
        optimizer: ``"sgd"`` or ``"adamw"`` (:class:`Optimizer`).
        warmup_epochs: Epochs over which the rate rises linearly from 0 to ``lr`` (0: none).
        cosine: Decay the rate after the warm-up to 0 at the end of ``epochs`` on a half cosine.
        patience: Stop a head after this many epochs without a better validation loss (None: never).
    """

    lr: float
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    optimizer: Optimizer = Optimizer.SGD
    warmup_epochs: int = 0
    cosine: bool = False
    patience: int | None = None

    def __post_init__(self) -> None:
        check_float(self.lr, "lr", minimum=0, exclusive_minimum=True)
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        if check_float(self.momentum, "momentum", minimum=0) >= 1:
            raise InvalidInputError(f"momentum must be less than 1, got {self.momentum!r}")
        check_float(self.weight_decay, "weight_decay", minimum=0)
        object.__setattr__(self, "optimizer", check_choice(Optimizer, self.optimizer, "optimizer"))
        if check_int(self.warmup_epochs, "warmup_epochs", minimum=0) >= self.epochs:
            raise InvalidInputError(f"warmup_epochs must be less than epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)

    @property
    def is_paper_recipe(self) -> bool:
        """True when the head trains as the paper's code does: SGD at a constant rate, all epochs."""
        return self.optimizer == Optimizer.SGD and not self.warmup_epochs and not self.cosine and self.patience is None

    def learning_rate_scale(self, progress: float) -> float:
        """The factor on ``lr`` at ``progress`` epochs into training (a float: 1.5 is half-way through epoch 2).

        Example:
            >>> hyper = HyperParameters(lr=1.0, epochs=10, batch_size=8, momentum=0, warmup_epochs=2, cosine=True)
            >>> [round(hyper.learning_rate_scale(p), 3) for p in (0, 1, 2, 6, 10)]
            [0.0, 0.5, 1.0, 0.5, 0.0]
        """
        if progress < self.warmup_epochs:
            return progress / self.warmup_epochs
        if not self.cosine:
            return 1.0
        fraction = min(1.0, (progress - self.warmup_epochs) / (self.epochs - self.warmup_epochs))
        return 0.5 * (1.0 + math.cos(math.pi * fraction))

    def to_dict(self) -> dict[str, float | int | str | bool | None]:
        """The values as plain Python numbers, e.g. for JSON metadata (the paper's recipe: its five values only)."""
        values: dict[str, float | int | str | bool | None] = {
            "lr": float(self.lr),
            "epochs": int(self.epochs),
            "batch_size": int(self.batch_size),
            "momentum": float(self.momentum),
            "weight_decay": float(self.weight_decay),
        }
        if not self.is_paper_recipe:
            values.update(
                optimizer=str(self.optimizer),
                warmup_epochs=int(self.warmup_epochs),
                cosine=bool(self.cosine),
                patience=None if self.patience is None else int(self.patience),
            )
        return values


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

FALLBACK_DEFAULTS = "coco"
"""Paper defaults for stores of datasets the paper did not tune on (``mose``, ``folder``, mixed stores)."""


def check_paper_dataset(dataset: str) -> str:
    """The key of :data:`PAPER_DEFAULTS` for a dataset name (case and dashes do not matter: ``"SA-V"``, ``"sav"``).

    Raises:
        InvalidInputError: If the paper has no hyper-parameters for the dataset.
    """
    key = _DATASET_ALIASES.get(str(dataset).lower().replace("-", "").replace("_", ""))
    if key is None:
        raise InvalidInputError(
            f"no paper hyper-parameters for dataset {dataset!r}; use one of {sorted(PAPER_DEFAULTS)} "
            "(or tune them with hpo trials)"
        )
    return key


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
    from usam.training.data import check_head_names

    table = PAPER_DEFAULTS[check_paper_dataset(dataset)]
    return {name: table.get(name, table.get("default")) for name in check_head_names(heads)}


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    """Whose paper hyper-parameters fit a store, and why.

    Attributes:
        dataset: The key of :data:`PAPER_DEFAULTS`.
        reason: Why, in words for the heads' metadata and the user.
        fallback: True when the paper tuned nothing for the store's data and COCO's stand in.
    """

    dataset: str
    reason: str
    fallback: bool


def defaults_for_datasets(datasets: Sequence[str]) -> DatasetDefaults:
    """Whose paper hyper-parameters fit rows of these datasets (values of a store's ``dataset`` column).

    Example:
        >>> defaults_for_datasets(["sav"]).dataset
        'sa-v'
        >>> defaults_for_datasets(["mose"])
        DatasetDefaults(dataset='coco', reason='the paper tuned no hyper-parameters for mose', fallback=True)
    """
    names = sorted(set(datasets))
    keys = {_DATASET_ALIASES.get(name.lower().replace("-", "").replace("_", "")) for name in names}
    if len(keys) == 1 and None not in keys:
        return DatasetDefaults(keys.pop(), f"the store's dataset {', '.join(names)}", fallback=False)
    if not names:
        reason = "the store names no dataset"
    elif len(names) == 1:
        reason = f"the paper tuned no hyper-parameters for {names[0]}"
    else:
        reason = f"the store mixes datasets {names}"
    return DatasetDefaults(FALLBACK_DEFAULTS, reason, fallback=True)


def hyper_parameters_per_head(
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters, names: Sequence[str]
) -> dict[str, HyperParameters]:
    """One set of hyper-parameters per head: the given set for every head, or each head's entry of a mapping.

    Raises:
        InvalidInputError: If a head has no entry or an entry is not a :class:`HyperParameters`.
    """
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
