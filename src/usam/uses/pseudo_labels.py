"""Pseudo-label filter (semi-supervised pipelines): keep the masks usam trusts, write them as a COCO dataset.

From a folder of images and a prompts file, every object is segmented, usam picks its mask
(:mod:`usam.uses.mask_choice`), and the mask is kept when its confidence passes a threshold: the conformal lower
bound of the IoU when the prediction carries one (``iou_lower``, from calibrated heads), else the predicted IoU.
Kept masks are written as a COCO dataset (``images``, ``annotations``, ``categories``) with compressed RLE
segmentations, which ``pycocotools.coco.COCO`` and common labelling tools read; every estimate rides along in each
annotation's ``usam`` field, and ``score`` is the predicted IoU.

The prompts file is JSON::

    {"images": [{"file": "a.jpg", "id": 7,
                 "objects": [{"points": [[x, y]], "negative_points": [[x, y]], "box": [x0, y0, x1, y1],
                              "category_id": 1}]}],
     "categories": [{"id": 1, "name": "object"}]}

``id``, ``negative_points``, ``box`` (or ``points``), ``category_id`` (default 1) and ``categories`` (default one
category per id used) are optional; file names are relative to the image folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from usam.datasets.base import path_inside, read_json
from usam.errors import DatasetError, InvalidInputError
from usam.files import write_json_atomically
from usam.outputs import encode_rle
from usam.uses.mask_choice import choose_masks
from usam.validation import StrEnum, check_choice, check_float

PSEUDO_LABELS_FORMAT = "usam-pseudo-labels"
"""``info.format`` of the COCO files usam writes."""


class KeepBy(StrEnum):
    """Which confidence must pass the threshold."""

    AUTO = "auto"
    """The conformal lower bound when the prediction has one, else the predicted IoU."""
    PREDICTED_IOU = "predicted-iou"
    """The predicted IoU of the picked mask."""
    LOWER_BOUND = "lower-bound"
    """The conformal lower bound of the IoU (calibrated heads only)."""


@dataclasses.dataclass(frozen=True)
class PseudoLabelFilter:
    """Keep a mask when its confidence is at least ``threshold``.

    Args:
        threshold: In [0, 1].
        keep_by: Which confidence (see :class:`KeepBy`).
    """

    threshold: float
    keep_by: KeepBy = KeepBy.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "threshold", check_float(self.threshold, "pseudo-label threshold", minimum=0, maximum=1)
        )
        object.__setattr__(self, "keep_by", check_choice(KeepBy, self.keep_by, "keep_by"))

    def confidence(self, predicted_iou: float, lower_bound: float | None) -> tuple[float, KeepBy]:
        """The value compared with the threshold and what it is.

        Raises:
            InvalidInputError: ``lower-bound`` was asked for but the prediction has none.
        """
        if self.keep_by is KeepBy.PREDICTED_IOU or (self.keep_by is KeepBy.AUTO and lower_bound is None):
            return float(predicted_iou), KeepBy.PREDICTED_IOU
        if lower_bound is None:
            raise InvalidInputError(
                "keeping pseudo-labels by their lower bound needs calibrated heads (predictions with iou_lower); "
                "calibrate the heads or keep by predicted-iou"
            )
        return float(lower_bound), KeepBy.LOWER_BOUND


@dataclasses.dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt from a prompts file."""

    points: list[list[float]]
    negative_points: list[list[float]]
    box: list[float] | None
    category_id: int


@dataclasses.dataclass(frozen=True)
class ImagePrompts:
    """One image of a prompts file."""

    file: str
    image_id: int
    objects: list[ObjectPrompt]


def read_prompts(path: str | Path) -> tuple[list[ImagePrompts], list[dict[str, Any]]]:
    """The images and categories of a prompts file (see the module's docstring).

    Raises:
        DatasetError: The file is missing, not JSON, or an entry is malformed (the message names it).
    """
    path = Path(path)
    data = read_json(path, what="prompts file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: a prompts file is a JSON object with an 'images' list")
    images, seen_ids = [], set()
    for position, entry in enumerate(data["images"]):
        where = f"{path}: images[{position}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DatasetError(f"{where} must be an object with a 'file' name")
        image_id = entry.get("id", position + 1)
        if isinstance(image_id, bool) or not isinstance(image_id, int) or image_id in seen_ids:
            raise DatasetError(f"{where}: id must be a whole number used once, got {image_id!r}")
        seen_ids.add(image_id)
        objects = entry.get("objects")
        if not isinstance(objects, list):
            raise DatasetError(f"{where} needs an 'objects' list")
        images.append(
            ImagePrompts(
                entry["file"],
                image_id,
                [_object_prompt(item, f"{where}.objects[{i}]") for i, item in enumerate(objects)],
            )
        )
    used = sorted({obj.category_id for image in images for obj in image.objects})
    categories = data.get("categories", [{"id": category, "name": f"category {category}"} for category in used])
    if not isinstance(categories, list) or not all(isinstance(item, dict) and "id" in item for item in categories):
        raise DatasetError(f"{path}: 'categories' must be a list of objects with an 'id'")
    return images, categories


def _object_prompt(item: Any, where: str) -> ObjectPrompt:
    if not isinstance(item, dict):
        raise DatasetError(f"{where} must be an object")
    try:
        points = [[float(x), float(y)] for x, y in item.get("points", [])]
        negative = [[float(x), float(y)] for x, y in item.get("negative_points", [])]
        box = None if item.get("box") is None else [float(value) for value in item["box"]]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: points are [x, y] pairs and a box is [x0, y0, x1, y1]") from None
    if box is not None and len(box) != 4:
        raise DatasetError(f"{where}: a box is [x0, y0, x1, y1], got {len(box)} numbers")
    if not points and box is None:
        raise DatasetError(f"{where} has no prompt; give 'points' and/or a 'box'")
    category = item.get("category_id", 1)
    if isinstance(category, bool) or not isinstance(category, int):
        raise DatasetError(f"{where}: category_id must be a whole number, got {category!r}")
    return ObjectPrompt(points, negative, box, category)


def lower_bound_of(prediction: Any, head: str) -> np.ndarray | None:
    """The conformal lower bound of ``head``'s IoU per mask, if the prediction carries one (``iou_lower``)."""
    lower = getattr(prediction, "iou_lower", None)
    if isinstance(lower, dict):
        lower = lower.get(head)
    return None if lower is None else np.asarray(lower, dtype=np.float64)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``bbox`` ``[x, y, width, height]`` of a boolean mask (zeros for an empty mask).

    Example:
        >>> mask_bbox(np.array([[0, 0, 0], [0, 1, 1]], dtype=bool))
        [1.0, 1.0, 2.0, 1.0]
    """
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(columns[0]), float(rows[0]), float(columns[-1] - columns[0] + 1), float(rows[-1] - rows[0] + 1)]


def label_image(
    model: Any, image: np.ndarray, prompts: ImagePrompts, keep: PseudoLabelFilter
) -> tuple[list[dict[str, Any]], int]:
    """Segment the objects of one image, keep the trusted masks, and return them as COCO annotations (no ids).

    Returns:
        The kept annotations and how many objects were dropped.
    """
    model.set_image(image)
    kept, dropped = [], 0
    for obj in prompts.objects:
        clicks = obj.points + obj.negative_points
        prediction = model.predict(
            point_coords=np.asarray(clicks, dtype=np.float32) if clicks else None,
            point_labels=np.asarray([1] * len(obj.points) + [0] * len(obj.negative_points)) if clicks else None,
            box=None if obj.box is None else np.asarray(obj.box, dtype=np.float32),
        )
        choice = choose_masks(prediction, model)
        index = int(choice.index)
        lower = lower_bound_of(prediction, choice.iou_head)
        lower_value = None if lower is None else float(lower[index])
        confidence, kept_by = keep.confidence(float(choice.predicted_iou), lower_value)
        if confidence < keep.threshold:
            dropped += 1
            continue
        mask = prediction.masks[index]
        kept.append(
            {
                "image_id": prompts.image_id,
                "category_id": obj.category_id,
                "segmentation": encode_rle(mask),
                "area": int(np.count_nonzero(mask)),
                "bbox": mask_bbox(mask),
                "iscrowd": 0,
                "score": float(choice.predicted_iou),
                "usam": {
                    "mask_index": index,
                    "sam_pick": int(choice.sam_index),
                    "kept_by": str(kept_by),
                    "confidence": confidence,
                    "predicted_iou": float(choice.predicted_iou),
                    "iou_lower": lower_value,
                    "sam_score": float(prediction.sam_scores[index]),
                    "entropy": float(prediction.entropy[index]),
                    "show_all_masks": None if choice.show_all_masks is None else bool(choice.show_all_masks),
                    "uncertainty": {name: float(values[index]) for name, values in prediction.uncertainty.items()},
                    "prompt": dataclasses.asdict(obj),
                },
            }
        )
    return kept, dropped


@dataclasses.dataclass
class PseudoLabelSummary:
    """What :func:`write_pseudo_labels` did."""

    path: Path
    images: int
    objects: int
    kept: int
    resumed_images: int


def write_pseudo_labels(
    model: Any,
    image_folder: str | Path,
    prompts_file: str | Path,
    out: str | Path,
    keep: PseudoLabelFilter,
    *,
    load_image: Callable[[Path], np.ndarray] | None = None,
    progress: bool = True,
    context: dict[str, Any] | None = None,
) -> PseudoLabelSummary:
    """Pseudo-label every image of a prompts file and write the kept masks as a COCO dataset at ``out``.

    Work is saved after every image in ``<out>.partial.json``; running again with the same inputs and filter
    resumes after the last finished image, and the partial file is removed once ``out`` is written.

    Args:
        model: An :class:`usam.UncertainSAM` with an IoU head of its size.
        image_folder: Folder the prompts file's names are relative to.
        prompts_file: The prompts (see the module's docstring).
        out: The COCO JSON to write.
        keep: The filter.
        load_image: Reads an image file (default :func:`usam.images.load_image`).
        progress: Show a progress bar.
        context: Extra fields for the file's ``info`` (model, heads, ...).

    Raises:
        DatasetError: A malformed prompts file or a name outside the image folder.
        HeadsFileError: The model lacks its IoU head.
    """
    from tqdm.auto import tqdm

    from usam.images import load_image as default_loader

    image_folder, out = Path(image_folder), Path(out)
    images, categories = read_prompts(prompts_file)
    loader = load_image or default_loader
    # The filter and the prompts decide what a partial file holds; another filter starts afresh.
    settings = {"threshold": keep.threshold, "keep_by": str(keep.keep_by), "prompts": str(Path(prompts_file))}
    partial_path = out.with_name(out.name + ".partial.json")
    done: dict[str, Any] = {"settings": settings, "images": [], "annotations": [], "objects": 0}
    if partial_path.exists():
        saved = read_json(partial_path, what="partial pseudo-label file")
        if isinstance(saved, dict) and saved.get("settings") == settings:
            done = saved
    resumed = len(done["images"])
    finished = {entry["id"] for entry in done["images"]}
    paths = {
        image.image_id: path_inside(image_folder, image.file, source=prompts_file, what="image") for image in images
    }
    for image in tqdm(images, desc="pseudo-labels", unit="image", disable=not progress):
        if image.image_id in finished:
            continue
        pixels = loader(paths[image.image_id])
        kept, _ = label_image(model, pixels, image, keep)
        done["images"].append(
            {
                "id": image.image_id,
                "file_name": image.file,
                "height": int(pixels.shape[0]),
                "width": int(pixels.shape[1]),
            }
        )
        done["annotations"].extend(kept)
        done["objects"] += len(image.objects)
        write_json_atomically(done, partial_path, indent=None)
    annotations = [{"id": number, **entry} for number, entry in enumerate(done["annotations"], start=1)]
    info = {
        "format": PSEUDO_LABELS_FORMAT,
        "description": "usam pseudo-labels: the masks whose confidence passed the threshold",
        "threshold": keep.threshold,
        "keep_by": str(keep.keep_by),
        "objects": done["objects"],
        "kept": len(annotations),
        **(context or {}),
    }
    dataset = {"info": info, "images": done["images"], "annotations": annotations, "categories": categories}
    write_json_atomically(dataset, out, indent=None)
    partial_path.unlink(missing_ok=True)
    return PseudoLabelSummary(out, len(done["images"]), done["objects"], len(annotations), resumed)
