"""Tests of image loading: the pixel limit against decompression bombs and the smallest images."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from usam.errors import InvalidInputError
from usam.images import MAX_PIXELS_VARIABLE, ImageTooLargeError, as_rgb_uint8, load_image, max_image_pixels
from usam.predictor import UncertainSAM

PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS  # 89,478,485 unless something changed it before the tests


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A few bytes of PNG whose header claims ``width`` x ``height`` RGB pixels; what a bomb looks like to open()."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(autouse=True)
def no_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_PIXELS_VARIABLE, raising=False)


@pytest.mark.parametrize(
    ("width", "height"),
    [(10_000, 10_000), (20_000, 20_000)],  # Pillow only warns about the first, and raises for the second
    ids=["above Pillow's limit", "above twice Pillow's limit"],
)
def test_image_above_pillows_limit_is_refused_with_one_clear_error(tmp_path: Path, width: int, height: int) -> None:
    path = write_png_header(tmp_path / "bomb.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
        with pytest.raises(ImageTooLargeError) as raised:
            load_image(path)
    message = str(raised.value)
    assert isinstance(raised.value, InvalidInputError)
    assert "\n" not in message
    assert str(path) in message
    assert f"{width * height} pixels" in message
    assert f"Pillow's safety limit against decompression bombs of {PILLOW_LIMIT} pixels" in message
    assert f"set the environment variable {MAX_PIXELS_VARIABLE} to a larger number, or to 0 for no limit" in message
    assert Image.MAX_IMAGE_PIXELS == PILLOW_LIMIT  # Pillow's own setting is left as it was


def test_the_variable_lowers_and_raises_the_limit(
    tmp_path: Path, rgb_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(path)
    pixels = rgb_image.shape[0] * rgb_image.shape[1]
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, str(pixels - 1))
    with pytest.raises(ImageTooLargeError, match=f"more than the limit set by {MAX_PIXELS_VARIABLE} of {pixels - 1} "):
        load_image(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, str(pixels))
    np.testing.assert_array_equal(load_image(path), rgb_image)
    # Pillow's own guard, however low, no longer gets in the way of a limit the user raised (or switched off)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels // 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(load_image(path), rgb_image)
        monkeypatch.setenv(MAX_PIXELS_VARIABLE, "0")
        assert max_image_pixels() is None
        np.testing.assert_array_equal(load_image(path), rgb_image)
    monkeypatch.delenv(MAX_PIXELS_VARIABLE)
    assert max_image_pixels() == pixels // 3  # unset: Pillow's limit, as whoever uses usam configured it
    with pytest.raises(ImageTooLargeError, match=f"Pillow's safety limit against decompression bombs of {pixels // 3}"):
        load_image(path)


@pytest.mark.parametrize("value", ["lots", "-1", "1.5", "1e9"])
def test_a_malformed_limit_is_reported_by_name(
    tmp_path: Path, rgb_image: np.ndarray, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(rgb_image).save(path)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, value)
    with pytest.raises(InvalidInputError, match=f"{MAX_PIXELS_VARIABLE} must be a whole number .*got '{value}'"):
        load_image(path)


def test_a_one_pixel_image_works_end_to_end(tmp_path: Path, predictor) -> None:
    """SAM2 resizes every image to its input size, so even 1 x 1 needs no minimum."""
    path = tmp_path / "dot.png"
    Image.fromarray(np.array([[[200, 10, 30]]], np.uint8)).save(path)
    image = as_rgb_uint8(load_image(path))
    assert image.shape == (1, 1, 3)
    np.testing.assert_array_equal(image[0, 0], (200, 10, 30))
    model = UncertainSAM(predictor, None)
    model.set_image(image)
    prediction = model.predict(point_coords=np.array([[0.0, 0.0]]), point_labels=np.array([1]))
    assert prediction.masks.shape == (3, 1, 1)
    assert np.isfinite(prediction.sam_scores).all()
