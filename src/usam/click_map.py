"""The click map: a prompt drawn densely for SAM's mask-prompt input (Gaussians at the clicks, a filled box).

Test-bed models are trained with it (:mod:`usam.testbed.model_training`), and a model whose card says
``prompting: click_map`` (:mod:`usam.model_card`) gets it with every prompt from :class:`usam.UncertainSAM`. This is
the one implementation both use, so a model is prompted exactly as it was trained. Model-agnostic (numpy only).
"""

from __future__ import annotations

import numpy as np

CLICK_MAP_SIGMA = 4.0
"""Standard deviation of a click's Gaussian, in pixels of the model's (square) input."""

CLICK_MAP_AMPLITUDE = 5.0
"""Peak value (a mask logit) of the click map."""


def click_map(
    points: np.ndarray | None,
    box: np.ndarray | None,
    *,
    map_size: int,
    image_hw: tuple[int, int],
    model_image_size: int | None = None,
    sigma_px: float = CLICK_MAP_SIGMA,
    amplitude: float = CLICK_MAP_AMPLITUDE,
) -> np.ndarray:
    """The dense form of one prompt at SAM's mask-input resolution.

    Args:
        points: (K, 2) positive clicks as (x, y) image pixels (each the centre of its pixel), or None.
        box: (4,) box (x0, y0, x1, y1) in image pixels, filled inclusively, or None.
        map_size: Side of the map (SAM2's mask input: a quarter of the model's input size).
        image_hw: (H, W) of the image the coordinates refer to; SAM2 resizes it to a square input.
        model_image_size: Side of the model's input; the Gaussians' sigma is in its pixels. Default: the image
            width (the training case, where image and input are the same square).
        sigma_px: Standard deviation of a click's Gaussian, in model-input pixels.
        amplitude: Peak value of the map (at a click, inside the box).

    Returns:
        (map_size, map_size) float32 logits: the maximum of the box and the clicks' Gaussians, 0 far from them.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    model_image_size = width if model_image_size is None else int(model_image_size)
    # Map cell centres in image pixels, per axis (the image is stretched to a square like SAM2's input).
    centres_x = (np.arange(map_size, dtype=np.float32) + 0.5) * (width / map_size)
    centres_y = (np.arange(map_size, dtype=np.float32) + 0.5) * (height / map_size)
    sigma_x = sigma_px * width / model_image_size
    sigma_y = sigma_px * height / model_image_size
    result = np.zeros((map_size, map_size), dtype=np.float32)
    if box is not None:
        x0, y0, x1, y1 = np.asarray(box, dtype=np.float32)
        inside_x = (centres_x >= x0) & (centres_x <= x1 + 1)
        inside_y = (centres_y >= y0) & (centres_y <= y1 + 1)
        result = (amplitude * (inside_y[:, None] & inside_x[None, :])).astype(np.float32)
    if points is not None:
        for x, y in np.asarray(points, dtype=np.float32).reshape(-1, 2) + 0.5:  # a click is its pixel's centre
            gauss_x = np.exp(-0.5 * ((centres_x - x) / sigma_x) ** 2)
            gauss_y = np.exp(-0.5 * ((centres_y - y) / sigma_y) ** 2)
            result = np.maximum(result, amplitude * gauss_y[:, None] * gauss_x[None, :])
    return result.astype(np.float32)
