"""Images in the form SAM2 expects: H x W x 3 uint8 RGB arrays.

Grayscale images are repeated to three channels, an alpha channel is dropped, 16-bit images are scaled to 8 bits.
Anything else (floats, other integer types, other shapes, empty images) is rejected with a message that says what
to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from usam.errors import InvalidInputError

_EIGHT_BIT_FROM_SIXTEEN = 257.0  # 65535 / 255: maps 0..65535 exactly onto 0..255


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
        InvalidInputError: The file does not exist, is not an image, or has an unsupported pixel format.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"image {path} does not exist")
    try:
        with Image.open(path) as picture:
            picture.load()
            picture = ImageOps.exif_transpose(picture)
            array = _pil_to_array(picture)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InvalidInputError(f"image {path} cannot be read ({error})") from None
    return as_rgb_uint8(array, name=f"image {path}")
