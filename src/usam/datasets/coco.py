"""COCO 2017 instance segmentation.

Layout (as extracted from the official zips)::

    root/
      annotations/instances_train2017.json, instances_val2017.json
      train2017/000000000009.jpg ...
      val2017/000000000139.jpg ...

Every non-crowd annotation (``iscrowd`` 0) whose decoded mask has at least :data:`MIN_MASK_PIXELS` foreground
pixels is one object, keyed by its annotation id. Polygons, uncompressed and compressed RLE are decoded with
pycocotools. Images without such an annotation are left out of :meth:`CocoReader.keys`.

An annotation whose segmentation is malformed (run lengths that do not add up to the image's pixels, an RLE of
another size, a polygon pycocotools rejects, no polygon or RLE at all) makes its whole image a skipped sample,
recorded with the annotation id and the annotation file: dropping just that object would store the image as
done, so a rerun after fixing the annotation file would not redo it. Such an image stays in
:meth:`CocoReader.keys` so that extraction counts it as skipped rather than leaving it out without a word. An image
whose ``file_name`` is absolute or climbs out of ``root/<split>2017`` with ``..`` is skipped the same way, unread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from usam.datasets.base import (
    DatasetFileError,
    DatasetReader,
    Sample,
    path_inside,
    pycocotools_mask,
    read_json,
    read_rgb_image,
)
from usam.errors import DatasetError

logger = logging.getLogger(__name__)

#: Masks with fewer foreground pixels are too small to prompt reliably and are left out.
MIN_MASK_PIXELS = 10

_INTEGER = re.compile(r"-?[0-9]+")


def _coco_id(value: Any) -> str | None:
    """An image or annotation id as text, so that ``1``, ``1.0`` and ``"1"`` name the same image; None if no id.

    COCO writes ids as integers, but converted datasets often write them as strings on one side only.
    """
    if isinstance(value, bool):  # a bool is an int to Python but never an id
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value:
        return value
    return None


def _id_order(text: str) -> tuple[int, int, str]:
    """Sort key of an id from :func:`_coco_id`: numbers first, in numeric order, then other names."""
    if _INTEGER.fullmatch(text):
        return (0, int(text), text)
    return (1, 0, text)


def _counts_from_compressed(counts: str | bytes) -> list[int]:
    """The run lengths of COCO's compressed RLE string, decoded as pycocotools' ``rleFrString`` does.

    Each count is a little-endian sequence of 6-bit characters (offset 48) holding 5 bits each, with 0x20 meaning
    "more follow" and 0x10 in the last one the sign; from the fourth count on, the count two back is added.

    Raises:
        ValueError: A character outside the alphabet, or a count cut off at the end.
    """
    text = counts.decode("ascii", errors="replace") if isinstance(counts, bytes) else counts
    values: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("the last run length is cut off")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} at {position} is not in the RLE alphabet")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


class CocoReader(DatasetReader):
    """COCO 2017 instance masks. Splits: ``"train"`` and ``"val"`` (``"train2017"``/``"val2017"`` accepted).

    Image keys are file stems (``"000000000139"``); object ids are annotation ids (``"1768"``). Ids may be
    integers or strings: an annotation belongs to the image whose id has the same text as its ``image_id``.
    """

    name: ClassVar[str] = "coco"

    @classmethod
    def _canonical_split(cls, split: str) -> str:
        """``"val2017"`` -> ``"val"``; whether the split exists is checked by its annotation file."""
        return split.removesuffix("2017")

    def _open(self) -> None:
        """Check that the annotation file exists; it is parsed on first use."""
        self.annotation_file = self.root / "annotations" / f"instances_{self.split}2017.json"
        self.image_folder = self.root / f"{self.split}2017"
        if not self.annotation_file.is_file():
            raise DatasetError(f"COCO annotation file {self.annotation_file} does not exist; {self.layout_hint()}")
        self._images_by_key: dict[str, dict[str, Any]] | None = None
        self._annotations_by_image: dict[str, list[dict[str, Any]]] = {}

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected COCO 2017 as root/annotations/instances_<split>2017.json and "
            "root/<split>2017/<file_name> "
            "(unzip annotations_trainval2017.zip and train2017.zip/val2017.zip into root)"
        )

    # --------------------------------------------------------------------------------------------- index

    def _index(self) -> dict[str, dict[str, Any]]:
        """Image records by key (and non-crowd annotations by image id text), built once from the json.

        Raises:
            DatasetFileError: The file is not a COCO instances file, an image record is malformed, two images share
                an id or a file stem, or the file has annotations but none names an image of it.
        """
        if self._images_by_key is not None:
            return self._images_by_key
        content = read_json(self.annotation_file, what="COCO annotation file")
        if not isinstance(content, dict) or not isinstance(content.get("images"), list):
            raise DatasetFileError(self.annotation_file, 'has no "images" list; it is not a COCO instances file')
        if not isinstance(content.get("annotations"), list):
            raise DatasetFileError(
                self.annotation_file,
                'has no "annotations" list; use instances_<split>2017.json, not an image-info file',
            )
        images_by_key: dict[str, dict[str, Any]] = {}
        keys_by_id: dict[str, str] = {}
        for record in content["images"]:
            try:
                key = Path(record["file_name"]).stem
                image_id = _coco_id(record["id"])
                int(record["height"]), int(record["width"])
            except (KeyError, TypeError, ValueError):
                raise DatasetFileError(
                    self.annotation_file, f"image record {record!r:.200} lacks id, file_name, height or width"
                ) from None
            if image_id is None:
                raise DatasetFileError(
                    self.annotation_file,
                    f"image {record['file_name']!r} has the id {record['id']!r}; an id must be an integer or a string",
                )
            if image_id in keys_by_id:
                raise DatasetFileError(
                    self.annotation_file, f"two images have the id {image_id} ({keys_by_id[image_id]} and {key})"
                )
            if key in images_by_key:
                raise DatasetFileError(
                    self.annotation_file,
                    f"two images share the file stem {key!r} (ids {images_by_key[key]['id']} and {record['id']})",
                )
            keys_by_id[image_id] = key
            images_by_key[key] = record
        annotations_by_image: dict[str, list[dict[str, Any]]] = {}
        unmatched: list[dict[str, Any]] = []
        annotations = [annotation for annotation in content["annotations"] if isinstance(annotation, dict)]
        for annotation in annotations:
            image_id = _coco_id(annotation.get("image_id"))
            if image_id not in keys_by_id:
                unmatched.append(annotation)
                continue
            if annotation.get("iscrowd", 0):
                continue
            if _coco_id(annotation.get("id")) is None:
                logger.warning("%s: ignoring an annotation without an id: %.200r", self.annotation_file, annotation)
                continue
            annotations_by_image.setdefault(image_id, []).append(annotation)
        if unmatched and len(unmatched) == len(annotations):
            example_image = (
                f" (image ids such as {content['images'][0]['id']!r}" if content["images"] else " (no images"
            )
            raise DatasetFileError(
                self.annotation_file,
                f'none of the {len(annotations)} annotations has the id of an image in its "images" list'
                f"{example_image}, annotation image_ids such as {unmatched[0].get('image_id')!r})",
                "each annotation's image_id must equal the id of its image",
            )
        if unmatched:
            logger.warning(
                "%s: ignoring %d annotation(s) whose image_id is the id of no image, e.g. %r",
                self.annotation_file,
                len(unmatched),
                unmatched[0].get("image_id"),
            )
        self._annotations_by_image = annotations_by_image
        self._images_by_key = images_by_key
        return images_by_key

    @staticmethod
    def _rle_problem(segmentation: dict[str, Any], height: int, width: int) -> str | None:
        """What is wrong with an RLE segmentation of an image of ``height`` x ``width``, or None if nothing.

        pycocotools trusts the run lengths: counts that stop short of ``height * width`` decode into uninitialised
        memory and broken compressed counts into errors or nonsense, so they are checked here first.
        """
        size = segmentation.get("size")
        # Exactly two ints: pycocotools' C code rejects [20.0, 30.0], which would compare equal to [20, 30].
        if not isinstance(size, list) or [type(value) for value in size] != [int, int] or size != [height, width]:
            return f"RLE size {size!r} is not the image's [height, width] [{height}, {width}]"
        counts = segmentation.get("counts")
        if isinstance(counts, (str, bytes)):
            try:
                counts = _counts_from_compressed(counts)
            except ValueError as error:
                return f"compressed RLE counts are malformed ({error})"
        elif not isinstance(counts, list) or not all(
            isinstance(count, int) and not isinstance(count, bool) for count in counts
        ):
            return "RLE counts are neither a compressed string nor a list of integers"
        if any(count < 0 for count in counts):
            return "RLE counts hold a negative run length"
        if sum(counts) != height * width:
            return f"RLE run lengths add up to {sum(counts)} pixels but the image has {height}x{width}={height * width}"
        return None

    def _rle(self, annotation: dict[str, Any], height: int, width: int) -> Any:
        """The annotation's mask as one compressed RLE, or None when it has only degenerate polygons.

        Raises:
            DatasetFileError: The segmentation is malformed; the message names the annotation id and the file.
        """
        mask_api = pycocotools_mask("COCO")
        segmentation = annotation.get("segmentation")
        problem: str | None
        if isinstance(segmentation, list):
            # A polygon list may hold several parts of one object: merge them into one mask. Polygons of fewer
            # than three points (a few in COCO itself) enclose nothing; pycocotools would read four numbers as a box.
            try:
                polygons = [polygon for polygon in segmentation if len(polygon) >= 6]
                if not polygons:
                    return None
                return mask_api.merge(mask_api.frPyObjects(polygons, height, width))
            except Exception as error:  # pycocotools raises bare Exceptions and TypeErrors for malformed input
                problem = f"pycocotools rejects its polygons ({type(error).__name__}: {error})"
        elif isinstance(segmentation, dict):
            problem = self._rle_problem(segmentation, height, width)
            if problem is None:
                if isinstance(segmentation["counts"], list):
                    return mask_api.frPyObjects(segmentation, height, width)
                return segmentation
        else:
            problem = f"has no polygon list or RLE but {type(segmentation).__name__} {segmentation!r:.80}"
        raise DatasetFileError(
            self.annotation_file,
            f"annotation {annotation.get('id')} of image id {annotation.get('image_id')} has a malformed "
            f"segmentation: {problem}",
            "fix or remove that annotation",
        )

    def _annotation_rles(self, record: dict[str, Any]) -> Iterator[tuple[dict[str, Any], Any]]:
        """Non-crowd annotations of an image with their RLE, in annotation-id order; size not yet checked.

        Raises:
            DatasetFileError: An annotation of the image is malformed.
        """
        height, width = int(record["height"]), int(record["width"])
        annotations = sorted(
            self._annotations_by_image.get(_coco_id(record["id"]), []), key=lambda a: _id_order(_coco_id(a["id"]))
        )
        for annotation in annotations:
            rle = self._rle(annotation, height, width)
            if rle is not None:
                yield annotation, rle

    def _has_objects(self, record: dict[str, Any]) -> bool:
        mask_api = pycocotools_mask("COCO")
        try:
            return any(int(mask_api.area(rle)) >= MIN_MASK_PIXELS for _, rle in self._annotation_rles(record))
        except DatasetFileError:
            # Listed, so that load() raises and the image is skipped and counted, not left out without a word.
            return True

    # ------------------------------------------------------------------------------------------ interface

    def _key_groups(self) -> Iterable[Iterable[str]]:
        # Decoding annotations is the expensive part; a generator keeps keys() with a small limit cheap.
        yield self._keys_with_objects(self._index())

    def _keys_with_objects(self, images_by_key: dict[str, dict[str, Any]]) -> Iterator[str]:
        """Keys of the images with at least one object, in order.

        Raises:
            DatasetFileError: Once the whole list is walked, when the file lists images but none has an object:
                an empty dataset from a non-empty file is a mistake to report, not a result.
        """
        found = False
        for key in sorted(images_by_key):
            if self._has_objects(images_by_key[key]):
                found = True
                yield key
        if images_by_key and not found:
            raise DatasetFileError(
                self.annotation_file,
                f"none of its {len(images_by_key)} images has a non-crowd annotation with a mask of at least "
                f"{MIN_MASK_PIXELS} pixels",
                "use an instance segmentation file (instances_<split>2017.json) with polygon or RLE masks",
            )

    def load(self, image_key: str) -> Sample:
        """Load one COCO image with its non-crowd masks of at least ``MIN_MASK_PIXELS`` pixels.

        Raises:
            DatasetError: The key is not in the annotation file, an annotation of the image is malformed, the
                image's ``file_name`` leads outside the image folder, or the image file is missing or broken.
        """
        record = self._index().get(image_key)
        if record is None:
            raise DatasetError(f"COCO image key {image_key!r} is not in {self.annotation_file}")
        # Annotations first: a malformed one makes decoding the image pointless.
        mask_api = pycocotools_mask("COCO")
        masks: dict[str, np.ndarray] = {}
        for annotation, rle in self._annotation_rles(record):
            mask = mask_api.decode(rle).astype(bool)
            if int(mask.sum()) >= MIN_MASK_PIXELS:
                masks[_coco_id(annotation["id"])] = mask
        image_path = path_inside(
            self.image_folder, record["file_name"], source=self.annotation_file, what=f"file_name of image {image_key}"
        )
        image = read_rgb_image(image_path)
        height, width = int(record["height"]), int(record["width"])
        if image.shape[:2] != (height, width):
            raise DatasetFileError(
                image_path,
                f"image is {image.shape[1]}x{image.shape[0]} but {self.annotation_file.name} says {width}x{height}",
                "the image file does not belong to this annotation file",
            )
        return self._sample(image_key, image, masks, self.annotation_file)
