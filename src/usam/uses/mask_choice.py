"""The right mask (task ambiguity): pick among SAM2's three masks by usam's predicted IoU, flag ambiguous objects.

SAM2 returns three masks per prompt and picks the one it scores highest. usam's IoU head of the model's size
predicts each mask's IoU; :func:`choose_masks` picks the highest instead. The ``task_gap`` head predicts how much
IoU a user would gain by choosing among the three; an object whose predicted task gap (read on the picked mask)
exceeds a threshold is flagged, so that an interface can show all three masks for it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from usam.errors import InvalidInputError
from usam.uses.requirements import check_iou_head, loaded_heads, own_iou_head
from usam.validation import check_float

TASK_GAP_HEAD = "task_gap"
"""The head that predicts the gain of choosing among the three masks."""

DEFAULT_TASK_GAP_THRESHOLD = 0.1
"""Objects whose predicted task gap exceeds this are flagged (the evaluation scores the flag for a true gap > 0.1)."""


@dataclasses.dataclass
class MaskChoice:
    """Which mask usam picks for each object of a prediction, and whether to show all three.

    Arrays have the prediction's object shape: ``()`` for one prompt, ``(B,)`` for B batched prompts.

    Attributes:
        index: usam's pick: the mask with the highest predicted IoU.
        sam_index: SAM's pick: the mask with the highest SAM score.
        predicted_iou: Predicted IoU of usam's pick.
        task_gap: Predicted task gap read on usam's pick, or None without a ``task_gap`` head.
        show_all_masks: Whether the predicted task gap exceeds the threshold, or None without a ``task_gap`` head.
        iou_head: The head that ranked the masks.
        task_gap_threshold: The flag's threshold.
    """

    index: np.ndarray
    sam_index: np.ndarray
    predicted_iou: np.ndarray
    task_gap: np.ndarray | None
    show_all_masks: np.ndarray | None
    iou_head: str
    task_gap_threshold: float


def pick_by_predicted_iou(predicted_iou: np.ndarray) -> np.ndarray:
    """Index of the mask with the highest predicted IoU along the last axis (the first of equal values).

    Example:
        >>> pick_by_predicted_iou(np.array([[0.2, 0.7, 0.5], [0.9, 0.1, 0.9]])).tolist()
        [1, 0]
    """
    values = np.asarray(predicted_iou, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise InvalidInputError(f"predicted IoUs need a mask axis, got shape {values.shape}")
    return np.argmax(values, axis=-1)


def check_task_gap_threshold(threshold: object) -> float:
    """A task-gap threshold, which must lie in the gap heads' range [-0.5, 0.5]."""
    return check_float(threshold, "task gap threshold", minimum=-0.5, maximum=0.5)


def choose_masks(
    prediction: Any,
    model: Any,
    *,
    iou_head: str | None = None,
    task_gap_threshold: float = DEFAULT_TASK_GAP_THRESHOLD,
) -> MaskChoice:
    """The mask usam picks among a prediction's masks and the flag of ambiguous objects.

    Args:
        prediction: An :class:`usam.UncertainPrediction` of ``model``.
        model: The :class:`usam.UncertainSAM` that made it (its heads and model size choose the IoU head).
        iou_head: The IoU head that ranks the masks; default the model's own size head (``iou_tiny`` for a tiny
            model).
        task_gap_threshold: Flag objects whose predicted task gap exceeds this (in [-0.5, 0.5]).

    Returns:
        The choice per object.

    Raises:
        HeadsFileError: The IoU head is not loaded (the message names it).
        InvalidInputError: A threshold outside [-0.5, 0.5].
    """
    purpose = "picking masks by predicted IoU"
    head = own_iou_head(model, purpose) if iou_head is None else check_iou_head(model, iou_head, purpose)
    threshold = check_task_gap_threshold(task_gap_threshold)
    predicted = np.asarray(prediction.uncertainty[head])
    index = pick_by_predicted_iou(predicted)
    task_gap = show_all = None
    if TASK_GAP_HEAD in loaded_heads(model):
        task_gap = _at(np.asarray(prediction.uncertainty[TASK_GAP_HEAD]), index)
        show_all = task_gap > threshold
    return MaskChoice(
        index=index,
        sam_index=np.argmax(np.asarray(prediction.sam_scores), axis=-1),
        predicted_iou=_at(predicted, index),
        task_gap=task_gap,
        show_all_masks=show_all,
        iou_head=head,
        task_gap_threshold=threshold,
    )


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[..., index]`` per object: the value of each object's chosen mask."""
    return np.take_along_axis(values, np.expand_dims(index, -1), axis=-1)[..., 0]
