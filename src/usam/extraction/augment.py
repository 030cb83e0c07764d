"""The paper's image augmentations for the Monte Carlo entropy over images (H_X).

Five versions of an image: unchanged, JPEG quality 10, JPEG quality 30, Gaussian noise of variance 5000 (in 0-255
units) and a 5 x 5 Gaussian blur. Noise is drawn from a generator seeded by (seed, image key), so results do not
depend on order, sharding or workers.
"""

from __future__ import annotations

import io

import numpy as np

from usam.errors import InvalidInputError
from usam.extraction.prompts import prompt_rng

AUGMENTATIONS: tuple[str, ...] = ("unchanged", "jpeg_quality_10", "jpeg_quality_30", "gaussian_noise_5000", "blur_5x5")
NOISE_VARIANCE = 5000.0
# cv2.GaussianBlur(image, (5, 5), 0), as in the paper's code, uses OpenCV's fixed 5-tap kernel for sigma 0.
BLUR_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at ``quality`` and decode again (RGB uint8 in, RGB uint8 out)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.array(decoded.convert("RGB"))


def gaussian_noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Add zero-mean Gaussian noise of the given variance (0-255 units), clipped to 0-255."""
    noise = rng.normal(0.0, np.sqrt(variance), size=image.shape)
    return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, kernel: np.ndarray = BLUR_KERNEL) -> np.ndarray:
    """Separable 5 x 5 Gaussian blur with mirrored borders (OpenCV's default BORDER_REFLECT_101)."""
    radius = len(kernel) // 2
    padded = np.pad(image.astype(np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(weight * padded[offset : offset + image.shape[0]] for offset, weight in enumerate(kernel))
    blurred = sum(weight * rows[:, offset : offset + image.shape[1]] for offset, weight in enumerate(kernel))
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def augment_image(image: np.ndarray, name: str, *, seed: int = 0, image_key: str = "") -> np.ndarray:
    """One of :data:`AUGMENTATIONS` applied to an H x W x 3 uint8 RGB image."""
    if name == "unchanged":
        return image
    if name == "jpeg_quality_10":
        return jpeg_compress(image, 10)
    if name == "jpeg_quality_30":
        return jpeg_compress(image, 30)
    if name == "gaussian_noise_5000":
        return gaussian_noise(image, NOISE_VARIANCE, prompt_rng(seed, image_key, "gaussian-noise"))
    if name == "blur_5x5":
        return gaussian_blur(image)
    raise InvalidInputError(f"unknown augmentation {name!r}; known: {list(AUGMENTATIONS)}")


def augmented_images(image: np.ndarray, *, seed: int = 0, image_key: str = "") -> list[np.ndarray]:
    """All five versions of an image, unchanged first."""
    return [augment_image(image, name, seed=seed, image_key=image_key) for name in AUGMENTATIONS]
