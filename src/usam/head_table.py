"""The one table of UncertainSAM heads: what each head predicts, learns from, and how it ranks objects.

Every module that needs a property of a head (the trainer's target column, the predictor's output offset, the
evaluation's ranking direction, the figure's words) reads it from :data:`HEADS`; nothing compares head names by
hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from usam.models import SIZES
from usam.validation import StrEnum


class HeadKind(StrEnum):
    """What a head predicts."""

    IOU = "iou"
    """An IoU in [0, 1]: the head reports its sigmoid output."""
    GAP = "gap"
    """An IoU gain in [-0.5, 0.5]: the head reports ``sigmoid - 0.5`` and learns ``clip(gap + 0.5, 0, 1)``."""


class Pairing(StrEnum):
    """Which of SAM2's four mask tokens scores returned mask k of a multimask call."""

    TRUE = "true"
    """Mask token k + 1, the token that produced the mask (heads usam trains)."""
    AS_RELEASED = "as-released"
    """Mask token k, as the paper's code does and its released heads were trained."""


GAP_OFFSET = 0.5
"""Gap heads report ``sigmoid - GAP_OFFSET`` and learn ``clip(gap + GAP_OFFSET, 0, 1)``."""


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The properties of one head.

    Attributes:
        name: Head name, as in heads files and results.
        kind: IoU or gap head.
        target_column: Store column of the head's target (for ``iou_<size>`` heads: the IoU of that size's model on
            the same object, see :attr:`model_size`).
        model_size: For ``iou_<size>`` heads, the SAM2 size whose IoU the head predicts; else None.
        description: What the value means, in words for figures and reports.
    """

    name: str
    kind: HeadKind
    target_column: str
    model_size: str | None
    description: str

    @property
    def is_gap(self) -> bool:
        """Whether the head predicts a gap."""
        return self.kind is HeadKind.GAP

    @property
    def output_offset(self) -> float:
        """What the head subtracts from its sigmoid output (0.5 for gap heads, 0 for IoU heads)."""
        return GAP_OFFSET if self.is_gap else 0.0

    @property
    def higher_is_uncertain(self) -> bool:
        """How the head ranks objects for correction: high gaps first, low IoUs first."""
        return self.is_gap

    def training_target(self, values: np.ndarray) -> np.ndarray:
        """The head's target in its sigmoid space: the IoU itself, or ``clip(gap + 0.5, 0, 1)`` for a gap.

        Example:
            >>> HEADS["task_gap"].training_target(np.array([-0.7, 0.1, 0.6]))
            array([0. , 0.6, 1. ])
        """
        values = np.asarray(values, dtype=np.float64)
        return np.clip(values + GAP_OFFSET, 0.0, 1.0) if self.is_gap else values


def size_head_name(size: str) -> str:
    """The IoU head of a SAM2 size, e.g. ``base-plus`` -> ``iou_base_plus``."""
    return "iou_" + size.replace("-", "_")


_SIZE_WORDS = {"tiny": "tiny", "small": "small", "base-plus": "base+", "large": "large"}

HEADS: dict[str, HeadSpec] = {
    **{
        size_head_name(size): HeadSpec(
            size_head_name(size), HeadKind.IOU, "iou", size, f"IoU if this were SAM2 {_SIZE_WORDS[size]}"
        )
        for size in SIZES
    },
    "iou_unsupervised": HeadSpec("iou_unsupervised", HeadKind.IOU, "unsupervised_iou", None, "IoU of SAM's own pick"),
    "iou_dense_prompt": HeadSpec(
        "iou_dense_prompt", HeadKind.IOU, "iou_dense_prompt", None, "IoU with a dense 8-point prompt"
    ),
    "model_gap": HeadSpec("model_gap", HeadKind.GAP, "model_gap", None, "gain from a larger model"),
    "prompt_gap": HeadSpec("prompt_gap", HeadKind.GAP, "prompt_gap", None, "gain from more clicks"),
    "task_gap": HeadSpec("task_gap", HeadKind.GAP, "task_gap", None, "gain from picking another mask"),
}
"""Every head, in the canonical order of UncertainSAM."""

HEAD_NAMES: tuple[str, ...] = tuple(HEADS)
"""The nine heads of UncertainSAM, in their canonical order."""

GAP_HEAD_NAMES: tuple[str, ...] = tuple(name for name, spec in HEADS.items() if spec.is_gap)
"""The three gap heads."""

SIZE_HEADS: dict[str, str] = {name: spec.model_size for name, spec in HEADS.items() if spec.model_size is not None}
"""IoU head of each SAM2 size, e.g. ``iou_base_plus`` -> ``base-plus``."""


def head_spec(name: str) -> HeadSpec:
    """The properties of a head.

    Raises:
        InvalidInputError: If no head has that name.
    """
    from usam.errors import InvalidInputError

    try:
        return HEADS[name]
    except KeyError:
        raise InvalidInputError(f"unknown head {name!r}; known heads are {', '.join(HEAD_NAMES)}") from None


def is_gap_head(name: str) -> bool:
    """Whether a head predicts a gap (reported as ``sigmoid - 0.5``) rather than an IoU."""
    return head_spec(name).is_gap


class SizeTargets(StrEnum):
    """What the ``iou_<size>`` heads of a heads file learned, as recorded in its training metadata."""

    OWN_ROWS = "own-size"
    """Each size head learned from its own size's rows (their tokens, their IoU)."""
    POOLED = "per-size-pooled"
    """Each size head learned from every row (any size's tokens) with its own size's IoU of the same object, as the
    paper trains them; only then can a size head read another size's tokens."""


SIZE_TARGETS_KEY = "size_targets"
"""Key of :attr:`usam.heads.HeadsMetadata.training` under which training records a :class:`SizeTargets`."""


def size_targets_of(training: Mapping[str, Any]) -> SizeTargets | None:
    """What the size heads of a heads file learned, from its training record, or None if it does not say.

    Training records it as ``training["data"][SIZE_TARGETS_KEY]``.
    """
    data = training.get("data")
    value = data.get(SIZE_TARGETS_KEY) if isinstance(data, Mapping) else None
    return SizeTargets(value) if value in SizeTargets.values() else None
