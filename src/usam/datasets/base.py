"""The common interface of the dataset readers and the file helpers they share.

A reader lists the image keys of one split of a dataset cheaply (:meth:`DatasetReader.keys`) and loads
one image with its ground-truth object masks on demand (:meth:`DatasetReader.load`). Iterating a reader loads
every selected key in order; a sample whose files are missing or broken is skipped, logged and recorded in
:attr:`DatasetReader.skipped`, so that one bad file does not stop a run over a large dataset.

File and folder names read from a dataset's own files (a COCO ``file_name``, a video list) are checked to stay
inside the dataset folder (:func:`path_inside`); one that does not is a skipped sample, never read.

Pixels are read as stored: EXIF orientation tags are ignored because the datasets annotate the stored pixels.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, TypedDict

import numpy as np

from usam.errors import DatasetError, InvalidInputError
from usam.validation import check_int

logger = logging.getLogger(__name__)

#: Suffix of the lists in messages that tell the user to install the optional data dependencies.
INSTALL_DATA_EXTRA = 'install them with: pip install "usam[data]"'


@dataclass
class Sample:
    """One image of a dataset with the ground-truth masks of the objects in it.

    Attributes:
        image_key: Stable key, unique within (dataset, split), e.g. ``"000000000139"`` (COCO),
            ``"bear/00012"`` (DAVIS video/frame) or ``"sav_000/sav_000001/00012"`` (SA-V training).
        image: H x W x 3 uint8 RGB image.
        masks: Object id (a stable string such as a COCO annotation id, an ADE20K class id or a DAVIS palette
            index) -> H x W boolean mask with at least one foreground pixel. May be empty when the annotation
            of a listed image shows no object: readers whose annotations are images (ADE20K, DAVIS, MOSE,
            SA-V val/test, folder) do not decode them to list keys.
        dataset: Name of the reader that produced the sample, e.g. ``"coco"``.
        split: Canonical split name, e.g. ``"train"`` or ``"val"``.
    """

    image_key: str
    image: np.ndarray
    masks: dict[str, np.ndarray]
    dataset: str
    split: str


@dataclass
class SkippedSample:
    """A sample that iteration skipped, and why.

    Attributes:
        image_key: Key of the skipped sample, or the key prefix of a whole video that could not be listed.
        path: The file that was missing or broken.
        reason: What was wrong with it.
    """

    image_key: str
    path: str
    reason: str


class DatasetFileError(DatasetError):
    """A file of a dataset is missing or malformed.

    Attributes:
        path: The offending file (or folder) as a string.
        problem: What is wrong with it, without the path.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        message = f"{path}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class SelectionOptions(TypedDict, total=False):
    """The key selection options every reader takes; see :class:`DatasetReader`.

    Readers with options of their own take these as ``**selection: Unpack[SelectionOptions]`` and pass them on.
    """

    every: int
    start: int
    stop: int | None
    limit: int | None


class DatasetReader(ABC):
    """Reads the images and ground-truth masks of one split of a dataset.

    Selection is the same for every reader: the full, deterministic key list is thinned to every ``every``-th
    key (for video datasets within each video, over its annotated frames; for image datasets over the images),
    then cut to the index range ``[start:stop]``, then to the first ``limit`` keys.

    Subclasses set :attr:`name` (and :attr:`title` and :attr:`split_names` when the dataset has fixed splits)
    and implement :meth:`_open`, :meth:`_key_groups` and :meth:`load`. A reader with options of its own
    overrides ``__init__`` with them as keyword-only parameters and passes ``**selection`` on.

    Attributes:
        name: Name of the dataset, e.g. ``"coco"``; the key of :data:`usam.datasets.DATASETS`.
        title: Name of the dataset in messages, e.g. ``"COCO"``.
        split_names: Accepted split names -> canonical split, or None when any non-empty name is accepted.
        root: The dataset folder as given.
        split: Canonical split name.
        skipped: Samples the last iteration skipped, with the path and reason of each.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    split_names: ClassVar[dict[str, str] | None] = None

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        every: int = 1,
        start: int = 0,
        stop: int | None = None,
        limit: int | None = None,
    ) -> None:
        """Check the arguments, then find and check the dataset's files (:meth:`_open`).

        Args:
            root: Dataset folder; see the reader's module for the expected layout.
            split: Split name; each reader documents the names it accepts.
            every: Keep every ``every``-th image (>= 1).
            start: First index of the selected range (>= 0).
            stop: End (exclusive) of the selected range, or None for the end of the list.
            limit: Keep at most this many keys after the range (>= 0), or None for all.

        Raises:
            InvalidInputError: An argument is out of range.
            DatasetError: Unknown split, ``root`` does not exist, or the dataset's layout is not found under it.
        """
        split = self._canonical_split(split)
        check_int(every, "every", minimum=1)
        check_int(start, "start", minimum=0)
        check_int(stop, "stop", minimum=0, optional=True)
        check_int(limit, "limit", minimum=0, optional=True)
        if not isinstance(split, str) or not split:
            raise InvalidInputError(f"split must be a non-empty string, got {split!r}")
        self.root = Path(root).expanduser()
        self._require_folders(self.root, what="dataset folder")
        self.split = split
        self.every = every
        self.start = start
        self.stop = stop
        self.limit = limit
        self.skipped: list[SkippedSample] = []
        self._keys: list[str] | None = None
        # Problems found while listing keys (e.g. a video without annotations); iteration reports them too.
        self._listing_problems: list[SkippedSample] = []
        self._open()

    # --------------------------------------------------------------------------------------------- interface

    @classmethod
    def layout_hint(cls) -> str:
        """One sentence describing the expected on-disk layout, for error messages."""
        return "see the documentation of usam.datasets for the expected layout"

    @classmethod
    def _canonical_split(cls, split: str) -> str:
        """The canonical name of a split name the user gave; checked before any other argument.

        Raises:
            DatasetError: :attr:`split_names` is set and does not hold ``split``.
        """
        if cls.split_names is None:
            return split
        if split not in cls.split_names:
            raise DatasetError(f"{cls.title} has no split {split!r}; use one of {', '.join(cls.split_names)}")
        return cls.split_names[split]

    @abstractmethod
    def _open(self) -> None:
        """Find the split's files under :attr:`root` and check the layout; called at the end of ``__init__``.

        Nothing is listed or decoded here: only the folders and files every key needs are checked to exist.

        Raises:
            DatasetError: The layout is not found.
        """

    @abstractmethod
    def _key_groups(self) -> Iterable[Iterable[str]]:
        """Yield the full key list in order, grouped: one group per video, or one group of all images.

        ``every`` is applied within each group. Groups may be lazy so that a small ``limit`` stays cheap.
        """

    @abstractmethod
    def load(self, image_key: str) -> Sample:
        """Load the image and masks of one key.

        Raises:
            DatasetError: The key is unknown or a file is missing or malformed (a :class:`DatasetFileError`
                naming the file in the latter case).
        """

    def keys(self) -> list[str]:
        """All selected image keys, in a deterministic order. Computed once and cached."""
        if self._keys is None:
            self._listing_problems = []
            thinned = itertools.chain.from_iterable(
                itertools.islice(group, 0, None, self.every) for group in self._key_groups()
            )
            in_range = itertools.islice(thinned, self.start, self.stop)
            self._keys = list(itertools.islice(in_range, self.limit))
        return list(self._keys)

    def __iter__(self) -> Iterator[Sample]:
        """Load the selected keys in order, skipping (and recording in :attr:`skipped`) broken samples."""
        keys = self.keys()
        self.skipped = list(self._listing_problems)
        for image_key in keys:
            try:
                sample = self.load(image_key)
            except DatasetError as error:
                path = getattr(error, "path", str(self.root))
                self._record_skip(image_key, path, str(error))
                continue
            yield sample

    def __len__(self) -> int:
        """Number of selected keys."""
        return len(self.keys())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, every={self.every}, "
            f"start={self.start}, stop={self.stop}, limit={self.limit})"
        )

    # ------------------------------------------------------------------------------------------------ helpers

    def _require_folders(self, *folders: Path, what: str) -> None:
        """Raise, with the layout hint, for the first of ``folders`` that is not a directory.

        Raises:
            DatasetError: Naming the folder as ``"<what> <folder> does not exist"``.
        """
        for folder in folders:
            if not folder.is_dir():
                raise DatasetError(f"{what} {folder} does not exist; {self.layout_hint()}")

    def _record_skip(self, image_key: str, path: str | Path, reason: str) -> None:
        self.skipped.append(SkippedSample(image_key=image_key, path=str(path), reason=reason))
        logger.warning("%s %s: skipping %s: %s", self.name, self.split, image_key, reason)

    def _listed_folder(self, folder: Path, name: str, *, source: Path) -> Path | None:
        """``folder / name`` for a video ``name`` read from the file ``source``, if it is a folder inside ``folder``.

        Otherwise the video is recorded as a listing problem and None returned.
        """
        try:
            listed = path_inside(folder, name, source=source, what="video")
        except DatasetFileError as error:
            self._record_listing_problem(name, error.path, error.problem)
            return None
        if not listed.is_dir():
            self._record_listing_problem(name, listed, "annotation folder does not exist")
            return None
        return listed

    def _record_listing_problem(self, key_prefix: str, path: str | Path, reason: str) -> None:
        """Note a video or image left out of :meth:`keys` because its files are broken; never silent."""
        self._listing_problems.append(SkippedSample(image_key=key_prefix, path=str(path), reason=reason))
        logger.warning("%s %s: leaving out %s: %s", self.name, self.split, key_prefix, reason)

    def _sample(self, image_key: str, image: np.ndarray, masks: dict[str, np.ndarray], source: Path) -> Sample:
        """Build a sample after checking that every mask has the image's height and width."""
        for object_id, mask in masks.items():
            check_mask_shape(mask, image, object_id=object_id, image_key=image_key, source=source)
        return Sample(image_key=image_key, image=image, masks=masks, dataset=self.name, split=self.split)


# ---------------------------------------------------------------------------------------------- file helpers

_FRAME_STEM = re.compile(r"^\d+$")


def split_key(image_key: str, parts: int, *, dataset: str) -> list[str]:
    """Split a ``"a/b/..."`` key into exactly ``parts`` non-empty parts.

    Raises:
        DatasetError: The key has another shape.
    """
    pieces = image_key.split("/")
    if len(pieces) != parts or not all(pieces) or any(piece in (".", "..") for piece in pieces):
        example = "/".join(["<video>", "<frame>"] if parts == 2 else ["<shard>", "<video>", "<frame>"])
        raise DatasetError(f"{dataset} image key {image_key!r} is malformed; expected {example}")
    return pieces


def path_inside(folder: Path, name: str, *, source: str | Path, what: str) -> Path:
    """``folder / name`` for a file or folder name read from a dataset file, refusing one that leaves ``folder``.

    Only the name is judged, by POSIX and Windows rules alike, so that a dataset file means the same on every
    system and symlinked dataset folders keep working: an empty name, an absolute name, a drive and any ``..``
    component are refused.

    Args:
        folder: The folder the name is relative to.
        name: The name as read, e.g. a COCO ``file_name`` or a video listed in a text file.
        source: The dataset file the name was read from, for the error.
        what: What the name names, for the error, e.g. ``"video"``.

    Raises:
        DatasetFileError: Naming ``source``.
    """
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if not name or posix.is_absolute() or windows.anchor or ".." in posix.parts or ".." in windows.parts:
        raise DatasetFileError(
            source,
            f"{what} {name!r} is not a relative path inside {folder}; it is not read",
            "names in dataset files must stay inside the dataset folder",
        )
    return folder / name


def sorted_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (case-insensitive) is one of ``suffixes``, sorted by name."""
    wanted = {suffix.lower() for suffix in suffixes}
    return sorted(
        (path for path in folder.iterdir() if path.suffix.lower() in wanted and path.is_file()),
        key=lambda path: path.name,
    )


def read_json(path: Path, *, what: str) -> Any:
    """Parse a JSON file.

    Raises:
        DatasetFileError: The file is missing or not valid JSON.
    """
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetFileError(path, f"{what} does not exist") from None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetFileError(path, f"{what} is not valid JSON ({error})", "re-download or re-extract it") from None


def read_name_list(path: Path, *, what: str) -> list[str]:
    """The non-empty lines of a UTF-8 text file listing one name per line, stripped.

    Raises:
        DatasetError: The file cannot be read.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{what} {path} cannot be read ({error})") from None
    return [line.strip() for line in lines if line.strip()]


def pycocotools_mask(dataset: str) -> Any:
    """Import and return the mask API of pycocotools.

    Raises:
        DatasetError: pycocotools is not installed; the message names ``dataset`` and the install command.
    """
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        raise DatasetError(f"reading {dataset} needs pycocotools; {INSTALL_DATA_EXTRA}") from None
    return mask_api


def _open_picture(path: Path, what: str):
    """Open and fully decode an image file with Pillow, turning every failure into a DatasetFileError.

    An image with more pixels than :func:`usam.images.max_image_pixels` is refused before it is decoded.
    """
    from PIL import UnidentifiedImageError

    from usam.images import ImageTooLargeError, open_image_file

    try:
        picture = open_image_file(path)
        picture.load()
    except FileNotFoundError:
        raise DatasetFileError(path, f"{what} does not exist") from None
    except UnidentifiedImageError:
        raise
    except ImageTooLargeError as error:
        raise DatasetFileError(path, f"{what} {error.problem}") from None
    except InvalidInputError:
        raise  # $USAM_MAX_IMAGE_PIXELS is malformed: a setting to fix, not a broken file to skip
    except Exception as error:
        # Pillow reports broken files as OSError, SyntaxError, ValueError, EOFError, zlib.error, ... depending
        # on the format; all of them mean the same thing here.
        raise DatasetFileError(
            path,
            f"{what} cannot be decoded ({type(error).__name__}: {error})",
            "re-download or replace the file",
        ) from None
    return picture


def _picture_to_array(picture, path: Path) -> np.ndarray:
    """Pixels of a decoded Pillow image as uint8 or uint16, with 1, 3 or 4 channels."""
    mode = picture.mode
    if mode in ("RGB", "L"):
        return np.asarray(picture)
    if mode.startswith("I;16"):
        return np.asarray(picture).astype(np.uint16)
    if mode == "I":
        # Pillow opens 16-bit grayscale PNGs as 32-bit integers holding 0..65535.
        values = np.asarray(picture)
        if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
            raise DatasetFileError(path, "32-bit integer images are not supported", "save it with 8 or 16 bits")
        return values.astype(np.uint16)
    if mode == "F":
        raise DatasetFileError(path, "floating-point images are not supported", "save it with 8 or 16 bits")
    if mode in ("P", "PA", "LA", "La", "RGBA", "RGBa"):
        # Through RGBA so that palette transparency is kept as alpha (dropped later) instead of warned about.
        return np.asarray(picture.convert("RGBA"))
    return np.asarray(picture.convert("RGB"))


def _cv2_image(path: Path, what: str, cause: Exception) -> np.ndarray:
    """Read a file Pillow cannot identify (e.g. some 16-bit TIFFs) with OpenCV, as RGB(A) channel order."""
    try:
        import cv2
    except ImportError:
        raise DatasetFileError(path, f"{what} is not an image Pillow can read ({cause})") from None
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetFileError(path, f"{what} is not a readable image ({cause})", "re-download or replace the file")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def read_rgb_image(path: Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB.

    Grayscale is repeated to three channels, alpha is dropped and 16-bit images are scaled to 8 bits.

    Raises:
        DatasetFileError: The file is missing, truncated, not an image, or has an unsupported pixel format.
    """
    from PIL import UnidentifiedImageError

    from usam.images import as_rgb_uint8

    try:
        with _open_picture(path, "image") as picture:
            array = _picture_to_array(picture, path)
    except UnidentifiedImageError as error:
        array = _cv2_image(path, "image", error)
    try:
        return as_rgb_uint8(array, name=f"image {path}")
    except InvalidInputError as error:
        raise DatasetFileError(path, f"unsupported image format ({error})", "convert it to 8-bit RGB") from None


def read_label_png(path: Path, *, what: str) -> np.ndarray:
    """Read an indexed (palette) or grayscale label PNG as an H x W integer array of labels.

    Raises:
        DatasetFileError: The file is missing, broken, or a colour image (whose labels would be ambiguous).
    """
    from PIL import UnidentifiedImageError

    try:
        with _open_picture(path, what) as picture:
            mode = picture.mode
            if mode in ("P", "L", "1") or mode.startswith("I"):
                return np.asarray(picture).astype(np.int64 if mode.startswith("I") else np.uint8)
    except UnidentifiedImageError as error:
        raise DatasetFileError(path, f"{what} is not an image ({error})", "re-download or replace it") from None
    raise DatasetFileError(
        path,
        f"{what} has colour mode {mode}; expected an indexed (palette) or grayscale PNG whose pixel "
        "values are object or class ids",
        "re-download the original annotation files",
    )


def read_binary_mask(path: Path, *, what: str) -> np.ndarray:
    """Read a mask image as an H x W boolean array: any non-zero pixel is foreground.

    For colour masks a pixel is foreground when any colour channel is non-zero and, if there is an alpha
    channel, it is not fully transparent.

    Raises:
        DatasetFileError: The file is missing or broken.
    """
    from PIL import UnidentifiedImageError

    try:
        with _open_picture(path, what) as picture:
            mode = picture.mode
            if mode in ("P", "L", "1") or mode.startswith("I") or mode == "F":
                return np.asarray(picture) != 0
            values = np.asarray(picture.convert("RGBA"))
    except UnidentifiedImageError as error:
        raise DatasetFileError(path, f"{what} is not an image ({error})", "re-download or replace it") from None
    return values[:, :, :3].any(axis=2) & (values[:, :, 3] != 0)


def check_mask_shape(
    mask: np.ndarray, image: np.ndarray, *, object_id: str, image_key: str, source: str | Path
) -> None:
    """Check that a mask has the image's height and width.

    Raises:
        DatasetFileError: Naming ``source``, the annotation file the mask came from.
    """
    if mask.shape != image.shape[:2]:
        raise DatasetFileError(
            source,
            f"mask of object {object_id} is {mask.shape[1]}x{mask.shape[0]} but image {image_key} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)",
            "the annotation does not belong to this image",
        )


def masks_from_label_map(labels: np.ndarray, *, ignore: Iterable[int] = (0,)) -> dict[str, np.ndarray]:
    """One boolean mask per label value in ``labels`` except the ``ignore`` values, by ascending value."""
    ignored = set(ignore)
    return {str(int(value)): labels == value for value in np.unique(labels) if int(value) not in ignored}


def is_frame_stem(stem: str) -> bool:
    """Whether a file stem is a frame number such as ``00012``."""
    return bool(_FRAME_STEM.match(stem))


class PaletteVideoReader(DatasetReader):
    """Shared reader for DAVIS-style video datasets: JPEG frames and one palette PNG per annotated frame.

    Subclasses set :attr:`frame_folder` and :attr:`annotation_folder` (each holding one folder per video) and
    :attr:`video_list` (the file naming the videos) in :meth:`_open` and list the videos. Every annotation PNG is
    one sample keyed ``"<video>/<frame stem>"``; each palette index except 0 (background) and 255 (void,
    unannotated pixels) is one object. A video whose name leads outside :attr:`annotation_folder` is left out and
    reported, like one without annotations.
    """

    frame_folder: Path
    annotation_folder: Path
    video_list: Path

    @abstractmethod
    def _videos(self) -> list[str]:
        """Names of the split's videos, in order."""

    def _key_groups(self) -> Iterable[Iterable[str]]:
        for video in self._videos():
            video_annotations = self._listed_folder(self.annotation_folder, video, source=self.video_list)
            if video_annotations is None:
                continue
            frames = [path.stem for path in sorted_files(video_annotations, (".png",))]
            if not frames:
                self._record_listing_problem(video, video_annotations, "annotation folder has no PNG files")
                continue
            yield [f"{video}/{frame}" for frame in frames]

    def load(self, image_key: str) -> Sample:
        """Load one annotated frame with one mask per object.

        Raises:
            DatasetError: The key is malformed, or the frame or its annotation PNG is missing or broken.
        """
        video, frame = split_key(image_key, 2, dataset=self.name)
        annotation_path = self.annotation_folder / video / f"{frame}.png"
        image = read_rgb_image(self.frame_folder / video / f"{frame}.jpg")
        labels = read_label_png(annotation_path, what=f"{self.name} annotation")
        return self._sample(image_key, image, masks_from_label_map(labels, ignore=(0, 255)), annotation_path)
