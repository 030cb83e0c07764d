"""SA-V (Segment Anything Video), the SAM2 video dataset.

Training split (``split="train"``), as extracted from the ``sav_NNN.tar`` shards::

    root/                       (or root/sav_train/, or a single shard folder as root)
      sav_000/
        sav_000001.mp4          24 fps video
        sav_000001_manual.json  manual masklets, see below
        sav_000001_auto.json    automatic masklets (not read)
      sav_001/ ...

The ``_manual.json`` holds ``masklet``, a list over annotated frames (6 fps, i.e. every 4th frame of the 24
fps video) of lists over objects of COCO RLEs, and ``masklet_id``, the object ids in the same order. Each
annotated frame where at least one object is visible is one sample keyed
``"sav_NNN/<video>/<24 fps frame, 5 digits>"``; objects with an empty mask in that frame are left out.
Frames are decoded from the mp4 with OpenCV.

Validation and test splits (``split="val"``/``"test"``), as extracted from ``sav_val.tar``/``sav_test.tar``::

    sav_val/                    (root, or its parent)
      sav_val.txt               video ids, one per line (optional; otherwise the annotation folders)
      JPEGImages_24fps/<video>/00000.jpg ...
      Annotations_6fps/<video>/<object id>/00000.png, 00004.png ...   (one binary PNG per object and frame)

Each frame with an annotation PNG is one sample keyed ``"<video>/<frame stem>"``; object ids are the object
folder names (``"000"``), and objects whose PNG is empty in that frame are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from usam.datasets.base import (
    INSTALL_DATA_EXTRA,
    DatasetFileError,
    DatasetReader,
    Sample,
    check_mask_shape,
    is_frame_stem,
    pycocotools_mask,
    read_binary_mask,
    read_json,
    read_name_list,
    read_rgb_image,
    sorted_files,
    split_key,
)
from usam.errors import DatasetError

#: SA-V videos are 24 fps and annotated at 6 fps: masklet entry i belongs to video frame i * 4.
ANNOTATION_STRIDE = 4

_SHARD_NAME = re.compile(r"^sav_\d{3}$")
_MANUAL_SUFFIX = "_manual.json"


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise DatasetError(f"reading SA-V videos needs opencv-python-headless; {INSTALL_DATA_EXTRA}") from None
    return cv2


class _SequentialFrames:
    """Decodes frames of one video at a time, reading forward from the last decoded frame.

    Iteration asks for increasing frames of one video, so keeping the capture open and grabbing forward
    decodes each frame once. Grabbing (instead of seeking with CAP_PROP_POS_FRAMES) is exact for every codec;
    seeking can land on a neighbouring frame for videos without regular key frames.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._capture: Any = None
        self._next_frame = 0

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._path, self._capture, self._next_frame = None, None, 0

    def read(self, path: Path, frame: int) -> np.ndarray:
        """Frame ``frame`` (0-based) of the video at ``path`` as H x W x 3 uint8 RGB.

        Raises:
            DatasetFileError: The video is missing, cannot be opened, or is shorter than ``frame + 1`` frames.
        """
        cv2 = _cv2()
        if path != self._path or frame < self._next_frame:
            self.close()
            if not path.is_file():
                raise DatasetFileError(path, "video does not exist")
            capture = cv2.VideoCapture(str(path))
            if not capture.isOpened():
                capture.release()
                raise DatasetFileError(path, "video cannot be opened", "re-download or re-extract the shard")
            self._path, self._capture, self._next_frame = path, capture, 0
        while self._next_frame < frame:
            if not self._capture.grab():
                reached = self._next_frame
                self.close()
                raise DatasetFileError(path, f"video ends after {reached} frames; frame {frame} was requested")
            self._next_frame += 1
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            self.close()
            raise DatasetFileError(path, f"frame {frame} cannot be decoded (video too short or broken)")
        self._next_frame += 1
        if bgr.ndim == 2:
            return np.ascontiguousarray(np.repeat(bgr[:, :, None], 3, axis=2))
        return np.ascontiguousarray(cv2.cvtColor(bgr[:, :, :3], cv2.COLOR_BGR2RGB))


class SavReader(DatasetReader):
    """SA-V frames and masklet masks. Splits: ``"train"`` (mp4 shards), ``"val"``, ``"test"`` (JPEG frames).

    Image keys are ``"sav_NNN/<video>/<frame>"`` (train) or ``"<video>/<frame>"`` (val/test), where
    ``<frame>`` is the 5-digit index of the frame in the 24 fps video. Object ids are masklet ids (train) or
    object folder names (val/test).

    Listing the training keys parses each video's ``_manual.json`` (about 50,000 in the full split) to find the
    frames with visible objects; the listing stops early once ``stop``/``limit`` are reached, and a single
    shard folder may be passed as root for quick runs.
    """

    name: ClassVar[str] = "sav"
    title: ClassVar[str] = "SA-V"
    split_names: ClassVar[dict[str, str] | None] = {"train": "train", "val": "val", "valid": "val", "test": "test"}

    def _open(self) -> None:
        """Find the shards (train) or the split folder (val/test)."""
        self._frames = _SequentialFrames()
        # The annotation of the video being read: iteration asks for many frames of one video in a row.
        self._cached_annotation: tuple[Path, dict[str, Any]] | None = None
        if self.split == "train":
            self.shards = self._find_shards()
        else:
            self.split_folder = self._find_split_folder()
            self.frame_folder = self.split_folder / "JPEGImages_24fps"
            self.annotation_folder = self.split_folder / "Annotations_6fps"
            # Optional: without it, the videos are the annotation folders.
            self.video_list = self.split_folder / f"sav_{self.split}.txt"

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected SA-V training shards as root/sav_NNN/<video>.mp4 with <video>_manual.json, or for "
            "val/test root/sav_val/JPEGImages_24fps/<video>/00000.jpg and "
            "root/sav_val/Annotations_6fps/<video>/<object>/00000.png (root may also be the sav_val or sav_test "
            "folder)"
        )

    def __getstate__(self) -> dict[str, Any]:
        # An open cv2.VideoCapture cannot be pickled (e.g. into worker processes); workers reopen videos.
        state = self.__dict__.copy()
        state["_frames"] = _SequentialFrames()
        state["_cached_annotation"] = None
        return state

    def close(self) -> None:
        """Release the open video, if any. Reading again reopens it."""
        self._frames.close()

    # ------------------------------------------------------------------------------------------- layout

    def _find_shards(self) -> list[Path]:
        def shards_in(folder: Path) -> list[Path]:
            return sorted(
                (path for path in folder.iterdir() if path.is_dir() and _SHARD_NAME.match(path.name)),
                key=lambda path: path.name,
            )

        for folder in (self.root, self.root / "sav_train"):
            if folder.is_dir() and (shards := shards_in(folder)):
                return shards
        if _SHARD_NAME.match(self.root.name) and any(self.root.glob(f"*{_MANUAL_SUFFIX}")):
            return [self.root]
        raise DatasetError(
            f"no SA-V training shard folders (sav_000, sav_001, ...) in {self.root}; {self.layout_hint()}"
        )

    def _find_split_folder(self) -> Path:
        for folder in (self.root, self.root / f"sav_{self.split}"):
            if (folder / "JPEGImages_24fps").is_dir() and (folder / "Annotations_6fps").is_dir():
                return folder
        raise DatasetError(
            f"SA-V {self.split} folders {self.root / f'sav_{self.split}' / 'JPEGImages_24fps'} and "
            f"Annotations_6fps do not exist; {self.layout_hint()}"
        )

    # --------------------------------------------------------------------------------------------- keys

    def _key_groups(self) -> Iterable[Iterable[str]]:
        if self.split == "train":
            yield from self._train_key_groups()
        else:
            yield from self._eval_key_groups()

    def _train_key_groups(self) -> Iterator[list[str]]:
        mask_api = pycocotools_mask("SA-V")
        for shard in self.shards:
            for annotation_path in sorted(shard.glob(f"*{_MANUAL_SUFFIX}"), key=lambda path: path.name):
                video = annotation_path.name.removesuffix(_MANUAL_SUFFIX)
                prefix = f"{shard.name}/{video}"
                video_path = shard / f"{video}.mp4"
                if not video_path.is_file():
                    self._record_listing_problem(prefix, video_path, "video does not exist next to its annotation")
                    continue
                try:
                    masklets, _ = self._read_masklets(annotation_path)
                    visible = [
                        any(int(area) > 0 for area in mask_api.area(rles)) if rles else False for rles in masklets
                    ]
                except DatasetFileError as error:
                    self._record_listing_problem(prefix, error.path, error.problem)
                    continue
                except Exception as error:  # pycocotools rejects malformed RLEs with bare Exceptions
                    self._record_listing_problem(prefix, annotation_path, f"malformed RLE in masklet ({error})")
                    continue
                yield [f"{prefix}/{index * ANNOTATION_STRIDE:05d}" for index, seen in enumerate(visible) if seen]

    def _eval_key_groups(self) -> Iterator[list[str]]:
        for video in self._eval_videos():
            video_annotations = self._listed_folder(self.annotation_folder, video, source=self.video_list)
            if video_annotations is None:
                continue
            frames: set[str] = set()
            for object_folder in self._object_folders(video):
                frames.update(path.stem for path in sorted_files(object_folder, (".png",)) if is_frame_stem(path.stem))
            if not frames:
                self._record_listing_problem(video, video_annotations, "no object mask PNGs")
                continue
            yield [f"{video}/{frame}" for frame in sorted(frames, key=lambda stem: (int(stem), stem))]

    def _eval_videos(self) -> list[str]:
        if self.video_list.is_file():
            return read_name_list(self.video_list, what="SA-V video list")
        return sorted(path.name for path in self.annotation_folder.iterdir() if path.is_dir())

    def _object_folders(self, video: str) -> list[Path]:
        return sorted(
            (path for path in (self.annotation_folder / video).iterdir() if path.is_dir()),
            key=lambda path: path.name,
        )

    # ------------------------------------------------------------------------------------------ loading

    def _read_masklets(self, annotation_path: Path) -> tuple[list[list[dict[str, Any]]], list[str]]:
        """The per-frame RLE lists and the object ids of a ``_manual.json``, checked for consistency."""
        cached = self._cached_annotation
        if cached is not None and cached[0] == annotation_path:
            content = cached[1]
        else:
            content = read_json(annotation_path, what="SA-V annotation")
            self._cached_annotation = (annotation_path, content)
        masklets = content.get("masklet") if isinstance(content, dict) else None
        object_ids = content.get("masklet_id") if isinstance(content, dict) else None
        if not isinstance(masklets, list) or not isinstance(object_ids, list):
            raise DatasetFileError(annotation_path, 'lacks the "masklet" or "masklet_id" list of SA-V annotations')
        for index, rles in enumerate(masklets):
            if not isinstance(rles, list) or len(rles) != len(object_ids):
                count = len(rles) if isinstance(rles, list) else "no"
                raise DatasetFileError(
                    annotation_path,
                    f"annotated frame {index} has {count} masks but masklet_id lists {len(object_ids)} objects",
                )
        return masklets, [str(object_id) for object_id in object_ids]

    def load(self, image_key: str) -> Sample:
        """Load one annotated frame with the masks of the objects visible in it.

        Raises:
            DatasetError: The key is malformed or names an unannotated frame, or a file is missing or broken.
        """
        if self.split == "train":
            return self._load_train(image_key)
        return self._load_eval(image_key)

    def _frame_number(self, image_key: str, frame: str) -> int:
        if not is_frame_stem(frame):
            raise DatasetError(f"SA-V image key {image_key!r} does not end in a frame number")
        return int(frame)

    def _load_train(self, image_key: str) -> Sample:
        shard, video, frame_text = split_key(image_key, 3, dataset=self.name)
        frame = self._frame_number(image_key, frame_text)
        shard_folder = next((path for path in self.shards if path.name == shard), None)
        if shard_folder is None:
            raise DatasetError(f"SA-V image key {image_key!r} names shard {shard}, which is not in {self.root}")
        annotation_path = shard_folder / f"{video}{_MANUAL_SUFFIX}"
        masklets, object_ids = self._read_masklets(annotation_path)
        index, offset = divmod(frame, ANNOTATION_STRIDE)
        if offset or index >= len(masklets):
            raise DatasetError(
                f"SA-V frame {frame} of {video} is not annotated: {annotation_path} annotates frames 0, "
                f"{ANNOTATION_STRIDE}, ..., {(len(masklets) - 1) * ANNOTATION_STRIDE}"
            )
        image = self._frames.read(shard_folder / f"{video}.mp4", frame)
        mask_api = pycocotools_mask("SA-V")
        masks: dict[str, np.ndarray] = {}
        for object_id, rle in zip(object_ids, masklets[index], strict=True):
            try:
                mask = mask_api.decode(rle).astype(bool)
            except Exception as error:  # pycocotools rejects malformed RLEs with bare Exceptions
                raise DatasetFileError(
                    annotation_path, f"malformed RLE of object {object_id} in frame {frame} ({error})"
                ) from None
            if mask.any():
                masks[object_id] = mask
        return self._sample(image_key, image, masks, annotation_path)

    def _load_eval(self, image_key: str) -> Sample:
        video, frame = split_key(image_key, 2, dataset=self.name)
        self._frame_number(image_key, frame)
        video_annotations = self.annotation_folder / video
        if not video_annotations.is_dir():
            raise DatasetFileError(video_annotations, "annotation folder does not exist")
        image = read_rgb_image(self.frame_folder / video / f"{frame}.jpg")
        masks: dict[str, np.ndarray] = {}
        for object_folder in self._object_folders(video):
            mask_path = object_folder / f"{frame}.png"
            if mask_path.is_file():
                mask = read_binary_mask(mask_path, what="SA-V object mask")
                # Checked here rather than in _sample so that the error names the offending PNG.
                check_mask_shape(mask, image, object_id=object_folder.name, image_key=image_key, source=mask_path)
                if mask.any():
                    masks[object_folder.name] = mask
        return self._sample(image_key, image, masks, video_annotations)
