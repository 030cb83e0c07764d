"""Predictions as files: COCO run-length encoding, the JSON record of ``usam predict``, COCO results of both kinds.

Masks are stored as compressed COCO RLE (``{"size": [H, W], "counts": "<string>"}``), byte for byte what
``pycocotools.mask.encode`` writes, so any COCO tool decodes them; the encoder here is plain numpy because
pycocotools is only an optional extra. Encoding reads the boolean mask directly (no float or integer copy of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from usam.automatic import PREDICTED_IOU_KEY
from usam.errors import InvalidInputError
from usam.predictor import UncertainPrediction

PREDICTION_FORMAT = "usam-prediction"
PREDICTION_FORMAT_VERSION = 2
# Counts below 2**31 (any image pycocotools handles) need at most 7 groups of 5 bits.
_MAX_RLE_GROUPS = 7


def rle_counts(mask: np.ndarray) -> np.ndarray:
    """Uncompressed COCO RLE counts of a 2-D mask: column-major run lengths, starting with a (maybe empty) 0-run.

    Args:
        mask: (H, W) boolean mask (any dtype: non-zero is foreground).

    Returns:
        (K,) int64 run lengths whose sum is H * W.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInputError(f"a mask to encode must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        mask = mask != 0
    # The transpose of a C-ordered mask is its column-major order; ravel copies one byte per pixel.
    flat = mask.T.ravel()
    if flat.size == 0:
        return np.zeros(1, dtype=np.int64)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries)
    if flat[0]:
        counts = np.concatenate([[0], counts])
    return counts.astype(np.int64)


def compress_counts(counts: Sequence[int] | np.ndarray) -> str:
    """COCO's compressed string for RLE counts (pycocotools' ``rleToString``), vectorised over the counts.

    Each count from the fourth on is stored as its difference to the count two before (pycocotools'
    rule); every value is written in
    groups of 5 bits, least significant first, each group as ``chr(48 + bits + 32 * more_follow)``.
    """
    values = np.asarray(counts, dtype=np.int64)
    if values.size == 0:
        return ""
    deltas = values.copy()
    deltas[3:] -= values[1:-2]
    characters = np.zeros((values.size, _MAX_RLE_GROUPS), dtype=np.uint8)
    used = np.zeros((values.size, _MAX_RLE_GROUPS), dtype=bool)
    active = np.ones(values.size, dtype=bool)
    remaining = deltas
    for group in range(_MAX_RLE_GROUPS):
        bits = remaining & 0x1F
        remaining = remaining >> 5  # arithmetic shift, as in C for the signed deltas
        more = np.where(bits & 0x10, remaining != -1, remaining != 0)
        characters[:, group] = 48 + bits + 32 * more
        used[:, group] = active
        active = active & more
    if active.any():
        raise InvalidInputError("a mask count is too large for COCO RLE (more than 2**31 pixels)")
    return characters[used].tobytes().decode("ascii")


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a 2-D mask, as ``pycocotools.mask.encode`` returns it (counts as a str).

    Example:
        >>> encode_rle(np.array([[0, 1], [1, 1]], dtype=bool))
        {'size': [2, 2], 'counts': '13'}
    """
    mask = np.asarray(mask)
    counts = rle_counts(mask)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": compress_counts(counts)}


def decode_counts(text: str) -> np.ndarray:
    """Inverse of :func:`compress_counts`: the run lengths of a compressed COCO RLE string."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            code = ord(text[position]) - 48
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            if not more and code & 0x10:
                value |= -1 << (shift + 5)
            shift += 5
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return np.asarray(counts, dtype=np.int64)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The (H, W) boolean mask of a COCO RLE (compressed string or uncompressed list counts)."""
    height, width = (int(value) for value in rle["size"])
    counts = rle["counts"]
    counts = decode_counts(counts) if isinstance(counts, str) else np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width:
        raise InvalidInputError(f"RLE counts sum to {counts.sum()}, not {height} x {width} pixels")
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(width, height).T


def _per_object(result: UncertainPrediction) -> tuple[int, bool]:
    """Number of objects in a result and whether its arrays carry an object axis."""
    batched = result.sam_scores.ndim == 2
    return (result.sam_scores.shape[0] if batched else 1), batched


def _mask_entries(result: UncertainPrediction, obj: int, batched: bool) -> list[dict[str, Any]]:
    def pick(values: np.ndarray) -> np.ndarray:
        return values[obj] if batched else values

    masks, scores, tokens = pick(result.masks), pick(result.sam_scores), pick(result.mask_token_index)
    entropy = pick(result.entropy)
    uncertainty = {name: pick(values) for name, values in result.uncertainty.items()}
    calibrated = {name: pick(values) for name, values in result.calibrated_iou.items()}
    lower = {name: pick(values) for name, values in result.iou_lower.items()}
    entries = []
    for index in range(scores.shape[0]):
        mask = masks[index] if masks.dtype == bool else masks[index] > 0
        entry = {
            "index": index,
            "mask_token": int(tokens[index]),
            "sam_score": float(scores[index]),
            "entropy": float(entropy[index]),
            "area": int(np.count_nonzero(mask)),
            "uncertainty": {name: float(values[index]) for name, values in uncertainty.items()},
        }
        if calibrated:  # only heads calibrated with `usam calibrate` have these
            entry["calibrated_iou"] = {name: float(values[index]) for name, values in calibrated.items()}
            entry["iou_lower"] = {name: float(values[index]) for name, values in lower.items()}
        entries.append(entry | {"segmentation": encode_rle(mask)})
    return entries


def prediction_record(result: UncertainPrediction, prompts: Sequence[dict[str, Any]], **context: Any) -> dict[str, Any]:
    """A JSON-ready description of a prediction: one entry per object (prompt), each with its masks.

    Args:
        result: A single-prompt or batched prediction.
        prompts: One JSON-ready description per object, in the order of the batch.
        **context: Extra top-level fields (image path, model, heads, ...).

    Returns:
        ``{"format", "format_version", **context, "image_size", "objects": [{"index", "prompt", "masks"}]}``;
        every mask entry holds ``sam_score``, ``entropy``, ``area``, ``uncertainty`` and the compressed RLE
        ``segmentation``; with calibrated heads also ``calibrated_iou`` and ``iou_lower`` (head -> value), and the
        record says under ``calibration`` the bound's miscoverage ``alpha`` and its guarantee.
    """
    count, batched = _per_object(result)
    if len(prompts) != count:
        raise InvalidInputError(f"{len(prompts)} prompt descriptions for a prediction of {count} objects")
    objects = [
        {"index": obj, "prompt": prompts[obj], "masks": _mask_entries(result, obj, batched)} for obj in range(count)
    ]
    calibration = {}
    if result.iou_lower:
        calibration["calibration"] = {
            "alpha": result.alpha,
            "bound": result.bound,
            "guarantee": "marginal over masks like the calibration rows: P(true IoU >= iou_lower) >= 1 - alpha",
        }
    return {
        "format": PREDICTION_FORMAT,
        "format_version": PREDICTION_FORMAT_VERSION,
        **context,
        **calibration,
        "image_size": list(result.image_size),
        "objects": objects,
    }


def coco_results(record: dict[str, Any], *, image_id: int, category_id: int = 1) -> list[dict[str, Any]]:
    """COCO results (what ``COCO.loadRes`` reads) for a :func:`prediction_record`: one per object and mask.

    ``score`` is SAM's score; usam's estimates ride along as extra fields (``entropy``, ``uncertainty``) together
    with ``usam_object`` and ``usam_mask``, the object and mask index in the record.
    """
    results = []
    for obj in record["objects"]:
        for entry in obj["masks"]:
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": entry["segmentation"],
                    "score": entry["sam_score"],
                    "entropy": entry["entropy"],
                    "uncertainty": entry["uncertainty"],
                    "usam_object": obj["index"],
                    "usam_mask": entry["index"],
                }
            )
    return results


AUTOMATIC_FORMAT = "usam-automatic-masks"
AUTOMATIC_FORMAT_VERSION = 1


def automatic_mask_results(
    records: Sequence[dict[str, Any]], *, image_id: int, score_key: str, category_id: int = 1
) -> list[dict[str, Any]]:
    """COCO results (what ``COCO.loadRes`` reads) for :class:`usam.automatic.UncertainMaskGenerator` records.

    ``score`` is the record's ``score_key`` value (the ranking's); every other estimate rides along: ``sam_score``,
    ``stability_score``, ``predicted_iou`` (usam's), ``entropy``, ``uncertainty`` {head: value}, ``point_coords``,
    ``crop_box``. Masks (boolean arrays) become compressed COCO RLE.
    """
    results = []
    for record in records:
        segmentation = record["segmentation"]
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation if isinstance(segmentation, dict) else encode_rle(segmentation),
                "bbox": [float(value) for value in record["bbox"]],
                "area": int(record["area"]),
                "score": record[score_key],
                "sam_score": record["predicted_iou"],
                "stability_score": record["stability_score"],
                "predicted_iou": record.get(PREDICTED_IOU_KEY),
                "entropy": record.get("entropy"),
                "uncertainty": dict(record.get("uncertainty", {})),
                "point_coords": record["point_coords"],
                "crop_box": record["crop_box"],
            }
        )
    return results
