"""ADE20K (SceneParsing / ADEChallengeData2016) semantic segmentation.

Layout (as extracted from ``ADEChallengeData2016.zip``)::

    ADEChallengeData2016/
      images/training/ADE_train_00000001.jpg ...
      images/validation/ADE_val_00000001.jpg ...
      annotations/training/ADE_train_00000001.png ...     (pixel value = class id 1..150, 0 = other)
      annotations/validation/ADE_val_00000001.png ...

``root`` may be ``ADEChallengeData2016`` itself or the folder containing it. Every class present in an image
(except 0) is one object, keyed by its class id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from usam.datasets.base import (
    DatasetReader,
    Sample,
    masks_from_label_map,
    read_label_png,
    read_rgb_image,
    sorted_files,
)
from usam.errors import DatasetError

#: Canonical split -> folder name.
_FOLDERS = {"train": "training", "val": "validation"}

_DATASET_FOLDER = "ADEChallengeData2016"


class Ade20kReader(DatasetReader):
    """ADE20K class masks. Splits: ``"train"``/``"training"`` and ``"val"``/``"validation"``.

    Image keys are file stems (``"ADE_val_00000001"``); object ids are class ids (``"12"``).
    """

    name: ClassVar[str] = "ade20k"
    title: ClassVar[str] = "ADE20K"
    split_names: ClassVar[dict[str, str] | None] = {
        "train": "train",
        "training": "train",
        "val": "val",
        "validation": "val",
    }

    def _open(self) -> None:
        """Find the dataset folder (``root`` or ``root/ADEChallengeData2016``) and the split's folders."""
        base = self.root / _DATASET_FOLDER if (self.root / _DATASET_FOLDER).is_dir() else self.root
        folder = _FOLDERS[self.split]
        self.image_folder = base / "images" / folder
        self.annotation_folder = base / "annotations" / folder
        self._require_folders(self.image_folder, self.annotation_folder, what="ADE20K folder")

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected ADEChallengeData2016/images/{training,validation}/*.jpg and "
            "ADEChallengeData2016/annotations/{training,validation}/*.png, with root pointing at "
            "ADEChallengeData2016 or its parent"
        )

    def _key_groups(self) -> Iterable[Iterable[str]]:
        yield [path.stem for path in sorted_files(self.image_folder, (".jpg",))]

    def load(self, image_key: str) -> Sample:
        """Load one image with one mask per class present.

        Raises:
            DatasetError: The image or its annotation PNG is missing or broken.
        """
        if "/" in image_key or image_key in ("", ".", ".."):
            raise DatasetError(f"ADE20K image key {image_key!r} is malformed; expected a file stem")
        image_path = self.image_folder / f"{image_key}.jpg"
        annotation_path = self.annotation_folder / f"{image_key}.png"
        image = read_rgb_image(image_path)
        labels = read_label_png(annotation_path, what="ADE20K annotation")
        return self._sample(image_key, image, masks_from_label_map(labels, ignore=(0,)), annotation_path)
