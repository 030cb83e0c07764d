"""Click prompts for an object mask, sampled the way the UncertainSAM paper does.

For every ground-truth object the paper prompts SAM2 with positive clicks only:

* one *center* click: the foreground pixel of the prompt mask closest to that mask's centroid, and
* seven *extra* clicks drawn at random from the prompt mask, which together with the center click form
  the "dense" prompt used for the prompt-refinement target.

The prompt mask is the object mask eroded once with a 5x5 square, so that clicks keep away from the
object's outline, where the ground truth is least reliable; a mask too thin to survive erosion is used
as it is. Random draws are seeded per object from ``(seed, image_key, object_id)`` so that a dataset
gives the same prompts however it is ordered, sharded or split over workers.

All coordinates are SAM2's: ``(x, y)`` in pixels, x being the column and y the row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from usam.errors import InvalidInputError
from usam.validation import check_int

#: Side of the square structuring element used to erode object masks.
EROSION_SIZE = 5

#: Number of random clicks added to the center click for the dense prompt.
DEFAULT_NUM_EXTRA_POINTS = 7


def _as_binary_mask(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a 2-D boolean array (non-zero is foreground), or raise InvalidInputError."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidInputError(f"a mask must be a 2-D array (height, width), got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidInputError(f"a mask must hold booleans or numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InvalidInputError("a mask must not contain NaN or infinite values")
    return array != 0


def erode_mask(mask: np.ndarray) -> np.ndarray:
    """Erode a binary mask once with a 5x5 square.

    A pixel stays foreground only if every pixel of the 5x5 square centred on it is foreground. Pixels
    outside the image count as foreground, as with OpenCV's ``cv2.erode`` and its default border, so an
    object touching the image border is not eaten away from that side. The result equals
    ``cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)``.

    Args:
        mask: 2-D array of shape (height, width); non-zero values are foreground.

    Returns:
        Boolean array of the same shape.

    Raises:
        InvalidInputError: If ``mask`` is not a 2-D boolean or numeric array, or holds NaN or infinity.
    """
    foreground = _as_binary_mask(mask)
    height, width = foreground.shape
    radius = EROSION_SIZE // 2
    # Padding with True is what makes the outside of the image count as foreground.
    padded = np.pad(foreground, radius, mode="constant", constant_values=True)
    # A square is separable: the minimum over the square is the minimum over rows of column minima.
    vertical = np.logical_and.reduce([padded[offset : offset + height, :] for offset in range(EROSION_SIZE)])
    return np.logical_and.reduce([vertical[:, offset : offset + width] for offset in range(EROSION_SIZE)])


def prompt_mask(mask: np.ndarray) -> np.ndarray:
    """Return the region clicks are placed in: the eroded mask, or the mask itself if erosion empties it.

    Args:
        mask: 2-D array of shape (height, width); non-zero values are foreground.

    Returns:
        Boolean array of the same shape with at least one foreground pixel.

    Raises:
        InvalidInputError: If ``mask`` has no foreground pixel or is not a valid mask.
    """
    foreground = _as_binary_mask(mask)
    if not foreground.any():
        raise InvalidInputError(f"cannot place a click in an empty mask (shape {foreground.shape})")
    eroded = erode_mask(foreground)
    return eroded if eroded.any() else foreground


def _center_point_of_region(region: np.ndarray) -> np.ndarray:
    """Return (x, y) of the pixel of a non-empty boolean ``region`` closest to the region's centroid."""
    rows, cols = np.nonzero(region)  # row-major order, which argmin's first-minimum rule relies on
    centroid_row = rows.mean()
    centroid_col = cols.mean()
    squared_distances = (rows - centroid_row) ** 2 + (cols - centroid_col) ** 2
    closest = int(np.argmin(squared_distances))
    return np.array([cols[closest], rows[closest]], dtype=np.float64)


def center_point(mask: np.ndarray) -> np.ndarray:
    """Return the center click of an object: the prompt-mask pixel closest to the prompt mask's centroid.

    The centroid of a non-convex object can lie outside it; taking the closest foreground pixel keeps the
    click on the object. Among equally close pixels the first in row-major order (smallest row, then
    smallest column) wins, so the result does not depend on anything but the mask.

    Args:
        mask: 2-D array of shape (height, width); non-zero values are foreground.

    Returns:
        Array of shape (2,), float64, holding ``(x, y)`` = (column, row) of the chosen pixel.

    Raises:
        InvalidInputError: If ``mask`` has no foreground pixel or is not a valid mask.
    """
    return _center_point_of_region(prompt_mask(mask))


def prompt_rng(seed: int, image_key: str, object_id: str) -> np.random.Generator:
    """Return the random generator for one object's prompts.

    The generator is seeded from a SHA-256 digest of ``(seed, image_key, object_id)``, not from Python's
    salted ``hash()``, so the same triple gives the same draws in every process, in any order, on any
    shard. ``image_key`` and ``object_id`` are used through ``str()``: the integer 3 and the string
    ``"3"`` name the same object.

    Args:
        seed: Experiment-wide seed.
        image_key: Identifier of the image, unique within the dataset (e.g. a file name or image id).
        object_id: Identifier of the object, unique within the image (e.g. an annotation id).

    Returns:
        A fresh ``numpy.random.Generator``.

    Raises:
        InvalidInputError: If ``seed`` is not an integer.
    """
    seed_value = check_int(seed, "seed")
    # JSON encoding keeps the three parts apart: ("a_b", "c") and ("a", "b_c") do not collide.
    key = json.dumps([seed_value, str(image_key), str(object_id)], ensure_ascii=True)
    digest = hashlib.sha256(key.encode("ascii")).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "big")))


def positive_labels(num_points: int) -> np.ndarray:
    """Return SAM2 point labels marking ``num_points`` clicks as positive: ones of dtype int32."""
    check_int(num_points, "the number of points", minimum=0)
    return np.ones(num_points, dtype=np.int32)


def _as_points(points: np.ndarray, what: str) -> np.ndarray:
    """Return ``points`` as a float32 array of shape (N, 2) with finite values, or raise."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be numbers of shape (N, 2) as (x, y), got {points!r}") from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise InvalidInputError(f"{what} must have shape (N, 2) as (x, y), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} must be finite, got {array.tolist()}")
    return array.astype(np.float32)


@dataclass
class ObjectPrompts:
    """The clicks for one object, as ``(x, y)`` pixel coordinates, all positive.

    Attributes:
        center: Array of shape (1, 2), float32: the single click of the center-point prompt.
        extra: Array of shape (K, 2), float32: further clicks (K = 7 when sampled) that, after the
            center click, make up the dense prompt.
    """

    center: np.ndarray
    extra: np.ndarray

    def __post_init__(self) -> None:
        self.center = _as_points(self.center, "the center click")
        if self.center.shape[0] != 1:
            raise InvalidInputError(f"the center click must have shape (1, 2), got {self.center.shape}")
        self.extra = _as_points(self.extra, "the extra clicks")

    @property
    def dense(self) -> np.ndarray:
        """Array of shape (1 + K, 2), float32: the center click followed by the extra clicks."""
        return np.concatenate([self.center, self.extra], axis=0)

    @property
    def center_labels(self) -> np.ndarray:
        """SAM2 labels for :attr:`center`: ``[1]``, int32."""
        return positive_labels(len(self.center))

    @property
    def dense_labels(self) -> np.ndarray:
        """SAM2 labels for :attr:`dense`: all ones, int32."""
        return positive_labels(len(self.center) + len(self.extra))


def sample_prompts(
    mask: np.ndarray,
    *,
    seed: int,
    image_key: str,
    object_id: str,
    num_extra: int = DEFAULT_NUM_EXTRA_POINTS,
) -> ObjectPrompts:
    """Sample the paper's clicks for one object.

    The center click is :func:`center_point`. The extra clicks are pixels of :func:`prompt_mask` drawn
    uniformly with :func:`prompt_rng`, without replacement, or with replacement if the prompt mask has
    fewer than ``num_extra`` pixels. They are drawn from the whole prompt mask, so one may coincide
    with the center click.

    Args:
        mask: 2-D array of shape (height, width); non-zero values are foreground.
        seed: Experiment-wide seed.
        image_key: Identifier of the image, unique within the dataset.
        object_id: Identifier of the object, unique within the image.
        num_extra: Number of random clicks to add to the center click.

    Returns:
        The object's prompts; ``extra`` has shape (num_extra, 2).

    Raises:
        InvalidInputError: If ``mask`` is empty or not a valid mask, ``seed`` is not an integer, or
            ``num_extra`` is negative.
    """
    check_int(num_extra, "num_extra", minimum=0)
    region = prompt_mask(mask)
    center = _center_point_of_region(region)
    rows, cols = np.nonzero(region)
    rng = prompt_rng(seed, image_key, object_id)
    chosen = rng.choice(len(rows), size=int(num_extra), replace=len(rows) < num_extra)
    extra = np.stack([cols[chosen], rows[chosen]], axis=1)
    return ObjectPrompts(center=center[np.newaxis, :], extra=extra)


def prompts_from_user(points: np.ndarray) -> ObjectPrompts:
    """Wrap clicks given by a user as :class:`ObjectPrompts`, bypassing sampling.

    The first click becomes the center click (used alone for the single-click prediction), the rest the
    extra clicks of the dense prompt.

    Args:
        points: Array-like of shape (N, 2), N >= 1, holding ``(x, y)`` pixel coordinates; a single click
            may also be given with shape (2,).

    Returns:
        The prompts; ``extra`` has shape (N - 1, 2).

    Raises:
        InvalidInputError: If ``points`` is not numeric of shape (N, 2) with N >= 1, or is not finite.
    """
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"the clicks must be numbers of shape (N, 2) as (x, y), got {points!r}") from None
    if array.shape == (2,):
        array = array[np.newaxis, :]
    checked = _as_points(array, "the clicks")
    if checked.shape[0] == 0:
        raise InvalidInputError("at least one click is needed, got none")
    return ObjectPrompts(center=checked[:1], extra=checked[1:])
