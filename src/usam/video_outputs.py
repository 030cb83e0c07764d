"""What ``usam video`` writes: per-object series of the estimates over frames, drops, re-prompt frames, the JSON.

A video's results are :class:`usam.video.VideoFrameResult` per frame; :func:`object_series` turns them into one
series per object (frame -> value), which both the JSON record and the figure (:mod:`usam.visualize_video`) read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from usam.head_table import HEADS, HeadKind, size_head_name
from usam.models import size_and_family
from usam.outputs import encode_rle
from usam.video import VideoFrameResult

VIDEO_FORMAT = "usam-video"
VIDEO_FORMAT_VERSION = 1

SAM_IOU = "sam_iou"
"""Name of SAM2's own IoU prediction where a series can be either it or a head."""


def tracked_estimate(head_names: Sequence[str], model_name: str | None) -> str:
    """The predicted IoU a video's plot and re-prompt list follow.

    The IoU head of the model's own size if loaded (it predicts this model's IoU), else the first loaded IoU head,
    else SAM2's own IoU prediction (:data:`SAM_IOU`).

    Example:
        >>> tracked_estimate(["model_gap", "iou_small", "iou_tiny"], "sam2.1-tiny")
        'iou_tiny'
        >>> tracked_estimate(["task_gap"], "sam2.1-tiny")
        'sam_iou'
    """
    size, _ = size_and_family(model_name) if model_name else (None, None)
    if size is not None and size_head_name(size) in head_names:
        return size_head_name(size)
    iou_heads = [name for name in head_names if name in HEADS and HEADS[name].kind is HeadKind.IOU]
    return iou_heads[0] if iou_heads else SAM_IOU


@dataclasses.dataclass
class ObjectSeries:
    """One object's values over the frames of a video, in frame order (NaN where there is none).

    Attributes:
        object_id: SAM2's object id.
        frames: (T,) frame indices.
        values: Name (a head, :data:`SAM_IOU`, ``entropy``, ``object_score_logit``) -> (T,) values.
        prompted: (T,) whether the frame's output came from a prompt.
    """

    object_id: Any
    frames: np.ndarray
    values: dict[str, np.ndarray]
    prompted: np.ndarray

    def drops(self, name: str, drop: float) -> np.ndarray:
        """Frames where ``name`` fell by more than ``drop`` from the previous frame with a value."""
        values = self.values[name]
        known = np.flatnonzero(np.isfinite(values))
        falls = values[known[1:]] < values[known[:-1]] - drop
        return self.frames[known[1:][falls]]

    def below(self, name: str, threshold: float) -> np.ndarray:
        """Frames where ``name`` is below ``threshold`` (prompted frames excluded: the user just looked at them)."""
        values = self.values[name]
        with np.errstate(invalid="ignore"):
            return self.frames[(values < threshold) & ~self.prompted]


def object_series(results: Sequence[VideoFrameResult]) -> list[ObjectSeries]:
    """One series per object (in order of first appearance) from per-frame results (any order, one per frame)."""
    ordered = sorted(results, key=lambda result: result.frame_index)
    frames = np.array([result.frame_index for result in ordered], dtype=np.int64)
    object_ids: list[Any] = []
    for result in ordered:
        object_ids += [obj_id for obj_id in result.object_ids if obj_id not in object_ids]
    series = []
    for obj_id in object_ids:
        values: dict[str, list[float]] = {}
        prompted = []
        for result in ordered:
            row = result.object_ids.index(obj_id) if obj_id in result.object_ids else None
            entries = {
                SAM_IOU: result.sam_iou,
                "entropy": result.entropy,
                "object_score_logit": result.object_score_logits,
                **result.uncertainty,
            }
            for name, array in entries.items():
                values.setdefault(name, []).append(math.nan if row is None else float(array[row]))
            prompted.append(False if row is None else bool(result.prompted[row]))
        series.append(
            ObjectSeries(
                object_id=obj_id,
                frames=frames,
                values={name: np.asarray(column, np.float64) for name, column in values.items()},
                prompted=np.asarray(prompted, bool),
            )
        )
    return series


def _number(value: float) -> float | None:
    """A JSON number, or None for NaN (strict JSON has no NaN)."""
    return None if not math.isfinite(value) else float(value)


def video_record(
    results: Sequence[VideoFrameResult],
    *,
    prompts: Mapping[Any, list[dict[str, Any]]],
    estimate: str,
    threshold: float | None,
    drop: float,
    **context: Any,
) -> dict[str, Any]:
    """The JSON record of a tracked video: per frame and object the estimates, SAM2's scores and the mask (RLE).

    Args:
        results: One result per frame.
        prompts: Object id -> its prompts (as given).
        estimate: The predicted IoU that drops and re-prompt frames follow (see :func:`tracked_estimate`).
        threshold: Frames where ``estimate`` is below it are listed per object under ``reprompt``; None for none.
        drop: Frames where ``estimate`` fell by more than this are listed per object under ``drops``.
        **context: Extra top-level entries (video path, model, heads, ...).
    """
    ordered = sorted(results, key=lambda result: result.frame_index)
    frames = []
    for result in ordered:
        objects = []
        for row, obj_id in enumerate(result.object_ids):
            mask = result.masks[row]
            objects.append(
                {
                    "id": obj_id,
                    "sam_iou": _number(result.sam_iou[row]),
                    "object_score_logit": _number(result.object_score_logits[row]),
                    "visible": bool(result.object_score_logits[row] > 0),
                    "entropy": _number(result.entropy[row]),
                    "uncertainty": {name: _number(values[row]) for name, values in result.uncertainty.items()},
                    "mask_token_index": int(result.mask_token_index[row]),
                    "prompted": bool(result.prompted[row]),
                    "area": int(np.count_nonzero(mask)),
                    "mask": encode_rle(mask),
                }
            )
        frames.append({"frame": result.frame_index, "objects": objects})
    series = object_series(ordered)
    size = list(ordered[0].masks.shape[-2:]) if ordered else None
    return {
        "format": VIDEO_FORMAT,
        "version": VIDEO_FORMAT_VERSION,
        **context,
        "frame_size": size,
        "num_frames_tracked": len(ordered),
        "objects": [{"id": obj_id, "prompts": object_prompts} for obj_id, object_prompts in prompts.items()],
        "estimate": estimate,
        "drop": drop,
        "drops": {str(item.object_id): item.drops(estimate, drop).tolist() for item in series},
        "threshold": threshold,
        "reprompt": (
            None
            if threshold is None
            else {str(item.object_id): item.below(estimate, threshold).tolist() for item in series}
        ),
        "frames": frames,
    }
