"""Your own images and masks, in a plain folder layout.

Layout::

    root/
      images/
        kitchen.jpg             any of .jpg .jpeg .png .bmp .tif .tiff (case-insensitive)
        street_04.png
      masks/
        kitchen/                one folder per image, named like the image without its extension
          cup.png               one PNG per object; any non-zero pixel is foreground
          table.png
        street_04/
          car_1.png

Image keys are the image file names without extension (``"kitchen"``); object ids are the mask file names
without extension (``"cup"``). Every mask must have the size of its image.

Images are converted to 8-bit RGB: grayscale is repeated to three channels, alpha is dropped, 16-bit images
are scaled to 8 bits. Masks may be grayscale, palette or binary PNGs; in a colour mask a pixel is foreground
when any colour channel is non-zero and it is not fully transparent. An image without a mask folder is
skipped and reported; an all-zero mask file is left out with a warning.

Two images with the same name but different extensions (``a.jpg`` and ``a.png``) are an error, because their
masks would share one folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from usam.datasets.base import (
    DatasetFileError,
    DatasetReader,
    Sample,
    SelectionOptions,
    check_mask_shape,
    read_binary_mask,
    read_rgb_image,
    sorted_files,
)
from usam.errors import DatasetError

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

#: Image file extensions the folder reader picks up (compared case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class FolderReader(DatasetReader):
    """Images in ``root/images`` with per-object mask PNGs in ``root/masks/<image name>/``.

    The split is only a label stored in each sample (default ``"all"``).
    """

    name: ClassVar[str] = "folder"

    def __init__(self, root: str | Path, split: str = "all", **selection: Unpack[SelectionOptions]) -> None:
        """Check the arguments and the layout.

        Args:
            root: Folder holding ``images`` and ``masks``.
            split: Label stored in each sample.
            **selection: ``every``, ``start``, ``stop``, ``limit``; see :class:`~usam.datasets.base.DatasetReader`.

        Raises:
            InvalidInputError: A selection option is out of range.
            DatasetError: ``root``, ``root/images`` or ``root/masks`` does not exist.
        """
        super().__init__(root, split, **selection)

    def _open(self) -> None:
        """Check that ``root/images`` and ``root/masks`` exist; the images are listed on first use."""
        self.image_folder = self.root / "images"
        self.mask_folder = self.root / "masks"
        self._require_folders(self.image_folder, self.mask_folder, what="folder")
        self._image_paths: dict[str, Path] | None = None

    @classmethod
    def layout_hint(cls) -> str:
        """Expected layout, for error messages."""
        return (
            "expected root/images/<name>.{jpg,jpeg,png,bmp,tif,tiff} and root/masks/<name>/<object>.png "
            "(one PNG per object, non-zero = foreground)"
        )

    def _images(self) -> dict[str, Path]:
        """Image files by key, sorted by key; listed once."""
        if self._image_paths is None:
            image_paths: dict[str, Path] = {}
            for path in sorted_files(self.image_folder, IMAGE_SUFFIXES):
                if path.stem in image_paths:
                    raise DatasetError(
                        f"images {image_paths[path.stem]} and {path} have the same name; their masks would "
                        "share "
                        f"{self.mask_folder / path.stem}. Rename one of them"
                    )
                image_paths[path.stem] = path
            self._image_paths = dict(sorted(image_paths.items()))
        return self._image_paths

    def _key_groups(self) -> Iterable[Iterable[str]]:
        yield list(self._images())

    def load(self, image_key: str) -> Sample:
        """Load one image with its object masks.

        Raises:
            DatasetError: The key is unknown, or the image, its mask folder or a mask is missing or broken.
        """
        image_path = self._images().get(image_key)
        if image_path is None:
            raise DatasetError(f"no image named {image_key!r} in {self.image_folder}")
        image = read_rgb_image(image_path)
        masks_of_image = self.mask_folder / image_key
        if not masks_of_image.is_dir():
            raise DatasetFileError(
                masks_of_image,
                "mask folder does not exist",
                f"put one PNG per object of {image_path.name} there",
            )
        masks: dict[str, np.ndarray] = {}
        for mask_path in sorted_files(masks_of_image, (".png",)):
            mask = read_binary_mask(mask_path, what="mask")
            check_mask_shape(mask, image, object_id=mask_path.stem, image_key=image_key, source=mask_path)
            if not mask.any():
                logger.warning("folder %s: leaving out empty mask %s", self.split, mask_path)
                continue
            masks[mask_path.stem] = mask
        return self._sample(image_key, image, masks, masks_of_image)
