"""COCO mask AP of automatic masks ("segment everything"), ranked three ways: SAM's score, stability, usam's IoU.

The same masks are scored three times with pycocotools' ``COCOeval`` (``iouType="segm"``, one category): only the
detection score changes, so the three APs say how well each score orders the masks (good masks before bad ones);
which masks exist is the generator's business. Ground truth is every object mask of a dataset sample.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.automatic import PREDICTED_IOU_KEY, RankBy, rank_key
from usam.datasets.base import INSTALL_DATA_EXTRA
from usam.errors import InvalidInputError, UsamError
from usam.outputs import encode_rle

AP_STATISTICS = ("AP", "AP50", "AP75", "AR100")
"""What :func:`automatic_mask_ap` reports per ranking: COCOeval's stats 0, 1, 2 and 8 (AR with 100 detections)."""

_STATISTIC_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR100": 8}


def _box_xywh(mask: np.ndarray) -> list[float]:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]


def automatic_mask_ap(
    images: Iterable[tuple[dict[str, np.ndarray], Sequence[dict[str, Any]]]],
    rankings: Sequence[RankBy | str] = tuple(RankBy),
) -> dict[str, dict[str, float]]:
    """COCO mask AP of generator records against ground-truth objects, once per ranking.

    Args:
        images: Per image, its ground-truth masks (object id -> H x W bool) and the generator's records
            (``segmentation`` as an H x W bool array or compressed COCO RLE, ``predicted_iou``,
            ``stability_score`` and, for ``predicted_iou`` ranking, :data:`usam.automatic.PREDICTED_IOU_KEY`).
        rankings: Which scores to rank by (:class:`usam.automatic.RankBy`).

    Returns:
        Ranking -> {statistic: value} for :data:`AP_STATISTICS` (COCO's -1 where there is no ground truth).

    Raises:
        InvalidInputError: No image, or records without the score a ranking needs (e.g. no heads).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UsamError(f"the COCO AP of automatic masks needs pycocotools; {INSTALL_DATA_EXTRA}") from None
    rankings = [RankBy(ranking) for ranking in rankings]
    gt_images, annotations, detections = [], [], {ranking: [] for ranking in rankings}
    for image_id, (truth, records) in enumerate(images, start=1):
        height, width = _image_size(truth, records)
        gt_images.append({"id": image_id, "height": height, "width": width})
        for mask in truth.values():
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": encode_rle(mask),
                    "area": float(np.count_nonzero(mask)),
                    "bbox": _box_xywh(mask),
                    "iscrowd": 0,
                }
            )
        for record in records:
            segmentation = _as_rle(record["segmentation"])
            for ranking in rankings:
                score = record.get(rank_key(ranking))
                if score is None:
                    raise InvalidInputError(
                        f"records have no {rank_key(ranking)} to rank by {ranking}"
                        + (" (generated without heads?)" if rank_key(ranking) == PREDICTED_IOU_KEY else "")
                    )
                detections[ranking].append(
                    {"image_id": image_id, "category_id": 1, "segmentation": segmentation, "score": float(score)}
                )
    if not gt_images:
        raise InvalidInputError("no images to evaluate")
    truth_set = COCO()
    truth_set.dataset = {"images": gt_images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth_set.createIndex()
    results: dict[str, dict[str, float]] = {}
    for ranking in rankings:
        if not detections[ranking]:
            results[str(ranking)] = dict.fromkeys(AP_STATISTICS, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(truth_set, truth_set.loadRes(detections[ranking]), iouType="segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        results[str(ranking)] = {name: float(evaluation.stats[_STATISTIC_INDEX[name]]) for name in AP_STATISTICS}
    return results


def _as_rle(segmentation: np.ndarray | dict[str, Any]) -> dict[str, Any]:
    return segmentation if isinstance(segmentation, dict) else encode_rle(np.asarray(segmentation, dtype=bool))


def _shape(segmentation: np.ndarray | dict[str, Any]) -> tuple[int, ...]:
    return tuple(segmentation["size"]) if isinstance(segmentation, dict) else np.shape(segmentation)


def _image_size(truth: dict[str, np.ndarray], records: Sequence[dict[str, Any]]) -> tuple[int, int]:
    shapes = {np.shape(mask) for mask in truth.values()} | {_shape(record["segmentation"]) for record in records}
    if len(shapes) != 1:
        raise InvalidInputError(f"masks of one image must share one size, got {sorted(shapes)}")
    height, width = next(iter(shapes))
    return int(height), int(width)


def ap_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of :func:`automatic_mask_ap`'s results: one row per ranking.

    Example:
        >>> print(ap_table({"sam_score": {"AP": 0.5, "AP50": 0.75, "AP75": 0.5, "AR100": 0.6}}))
        | ranked by | AP | AP50 | AP75 | AR100 |
        |---|---|---|---|---|
        | sam_score | 0.500 | 0.750 | 0.500 | 0.600 |
    """
    lines = ["| ranked by | " + " | ".join(AP_STATISTICS) + " |", "|---" * (len(AP_STATISTICS) + 1) + "|"]
    for ranking, values in results.items():
        lines.append(f"| {ranking} | " + " | ".join(f"{values[name]:.3f}" for name in AP_STATISTICS) + " |")
    return "\n".join(lines)


def run_automatic_evaluation(
    reader: Iterable[Any], generator: Any, out: Path, *, progress: bool = True, context: dict[str, Any] | None = None
) -> dict[str, dict[str, float]]:
    """Generate masks for every sample of a dataset and write their COCO mask AP under the three rankings.

    Writes ``out/automatic_ap.json`` (every number, the context, the number of images and masks) and
    ``out/automatic_ap.md`` (:func:`ap_table`).

    Args:
        reader: Dataset samples (:class:`usam.datasets.Sample`: an image and its object masks).
        generator: A :class:`usam.automatic.UncertainMaskGenerator` with heads.
        out: Output folder (created if missing).
        progress: Show a progress bar.
        context: What to record beside the numbers (model, heads, options).

    Returns:
        What :func:`automatic_mask_ap` returns.
    """
    from tqdm.auto import tqdm

    from usam.files import write_json_atomically, write_text_atomically

    images, masks = [], 0
    for sample in tqdm(reader, desc="automatic masks", unit="image", disable=not progress):
        records = generator.generate(sample.image)
        for record in records:  # RLE keeps every image's masks small until the evaluation
            record["segmentation"] = _as_rle(record["segmentation"])
        masks += len(records)
        images.append((sample.masks, records))
    results = automatic_mask_ap(images)
    out.mkdir(parents=True, exist_ok=True)
    summary = {**(context or {}), "images": len(images), "masks": masks, "ap": results}
    write_json_atomically(summary, out / "automatic_ap.json")
    write_text_atomically(
        out / "automatic_ap.md",
        f"COCO mask AP of automatic masks on {len(images)} images ({masks} masks), by ranking:\n\n"
        + ap_table(results)
        + "\n",
    )
    return results
