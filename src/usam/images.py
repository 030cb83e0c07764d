"""Images in the form SAM2 expects: H x W x 3 uint8 RGB arrays.

Grayscale images are repeated to three channels, an alpha channel is dropped, 16-bit images are scaled to 8 bits.
Anything else (floats, other integer types, other shapes, empty images) is rejected with a message that says what
to do. Any size from 1 x 1 up works: SAM2 resizes every image to its input size.

Image files with more pixels than :func:`max_image_pixels` (by default Pillow's guard against decompression bombs,
about 89 million pixels) are refused from their header, before any pixel is decoded; set the environment variable
``USAM_MAX_IMAGE_PIXELS`` to a larger number, or to 0 for no limit, to read larger images you trust.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from usam.errors import InvalidInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PillowImage

_EIGHT_BIT_FROM_SIXTEEN = 257.0  # 65535 / 255: maps 0..65535 exactly onto 0..255

#: Environment variable holding the largest image, in pixels, usam decodes; 0 means no limit.
MAX_PIXELS_VARIABLE = "USAM_MAX_IMAGE_PIXELS"

# Serialises the moments in which Pillow's own pixel limit is switched off (see open_image_file).
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageTooLargeError(InvalidInputError):
    """An image file has more pixels than :func:`max_image_pixels` allows.

    Attributes:
        path: The image file as a string.
        problem: What is wrong and how to allow it, without the path.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"image {path} {problem}")


def max_image_pixels() -> int | None:
    """The largest image, in pixels, that usam decodes; None for no limit.

    ``$USAM_MAX_IMAGE_PIXELS`` when set (0: no limit), else Pillow's ``Image.MAX_IMAGE_PIXELS`` (its guard against
    decompression bombs, which code using usam may have changed).

    Raises:
        InvalidInputError: The variable is set to something other than a whole number >= 0.
    """
    return _pixel_limit()[0]


def _pixel_limit() -> tuple[int | None, str]:
    """:func:`max_image_pixels` and, for messages, where it comes from; the one place the variable is read."""
    from PIL import Image

    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return Image.MAX_IMAGE_PIXELS, "Pillow's safety limit against decompression bombs"
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise InvalidInputError(
            f"{MAX_PIXELS_VARIABLE} must be a whole number of pixels, or 0 for no limit; got {text!r}"
        )
    return limit or None, f"the limit set by {MAX_PIXELS_VARIABLE}"


def open_image_file(path: str | os.PathLike[str]) -> PillowImage:
    """Open an image file with Pillow, reading only its header, and refuse it if it is too large to decode.

    Pillow's own check (a warning above its limit, an error above twice it) is switched off while the header is
    read, so that one limit, :func:`max_image_pixels`, applies with one message that says how to raise it. The
    switch is made under a lock and undone at once; nothing is decoded while it lasts.

    Raises:
        ImageTooLargeError: The image has more pixels than :func:`max_image_pixels`.
        InvalidInputError: ``$USAM_MAX_IMAGE_PIXELS`` is malformed.
        Exception: Whatever ``PIL.Image.open`` raises for a missing or unreadable file.
    """
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        limit, limit_source = _pixel_limit()  # in the lock: it may read Pillow's limit, switched off below
        pillow_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            picture = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    width, height = picture.size
    if limit is not None and width * height > limit:
        picture.close()
        raise ImageTooLargeError(
            path,
            f"is {width}x{height} = {width * height} pixels, more than {limit_source} of {limit} pixels; if you trust "
            f"the file, set the environment variable {MAX_PIXELS_VARIABLE} to a larger number, or to 0 for no limit",
        )
    return picture


def as_rgb_uint8(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert an array to H x W x 3 uint8 RGB, or reject it.

    Accepts H x W (grayscale), H x W x 1, H x W x 3 (RGB) and H x W x 4 (RGBA, alpha dropped) arrays of dtype
    uint8 or uint16 (scaled to 8 bits).

    Raises:
        InvalidInputError: For other dtypes, shapes or an empty image.
    """
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image

            if isinstance(image, Image.Image):
                return as_rgb_uint8(_pil_to_array(image), name=name)
        except ImportError:  # pragma: no cover - pillow is a dependency
            pass
        raise InvalidInputError(f"{name} must be a numpy array (H x W x 3, uint8 RGB), got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        channels = image.shape[2]
    elif image.ndim == 2:
        channels = 1
    else:
        raise InvalidInputError(
            f"{name} has shape {image.shape}; expected H x W (grayscale), H x W x 3 (RGB) or H x W x 4 (RGBA)"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {image.shape})")
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / _EIGHT_BIT_FROM_SIXTEEN).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InvalidInputError(
            f"{name} has dtype {image.dtype}; expected uint8 (0-255) or uint16. Convert floats in [0, 1] with "
            "(image * 255).round().astype(np.uint8)"
        )
    if channels == 1:
        plane = image if image.ndim == 2 else image[:, :, 0]
        image = np.repeat(plane[:, :, None], 3, axis=2)
    elif channels == 4:
        image = image[:, :, :3]
    image = np.ascontiguousarray(image)
    # SAM2 turns the array into a tensor; a read-only array (e.g. straight from PIL) makes torch warn.
    return image if image.flags.writeable else image.copy()


def _pil_to_array(picture) -> np.ndarray:
    mode = picture.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(picture).astype(np.uint16)
    if mode == "I":
        # PIL opens 16-bit grayscale PNGs as 32-bit integers holding 0..65535.
        values = np.asarray(picture)
        if values.min() < 0 or values.max() > 65535:
            raise InvalidInputError("32-bit integer images are not supported; save the image with 8 or 16 bits")
        return values.astype(np.uint16)
    if mode == "F":
        raise InvalidInputError("floating-point images are not supported; save the image with 8 or 16 bits")
    if mode in ("RGB", "L"):
        return np.asarray(picture)
    if mode in ("RGBA", "LA", "P", "PA", "1", "CMYK", "YCbCr", "HSV", "LAB", "RGBX", "RGBa", "La"):
        return np.asarray(picture.convert("RGB"))
    raise InvalidInputError(f"image mode {mode!r} is not supported; convert the image to RGB")


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, honouring its EXIF orientation.

    Raises:
        InvalidInputError: The file does not exist, is not an image, has an unsupported pixel format, or has more
            pixels than :func:`max_image_pixels` (an :class:`ImageTooLargeError`).
    """
    from PIL import ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"image {path} does not exist")
    try:
        with open_image_file(path) as picture:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            array = _pil_to_array(picture)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InvalidInputError(f"image {path} cannot be read ({error})") from None
    return as_rgb_uint8(array, name=f"image {path}")
