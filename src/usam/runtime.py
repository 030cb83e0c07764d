"""Seconds per image of SAM2 with each uncertainty method, as in the paper's runtime table.

Every variant segments one object from one click on a fresh image (the image is encoded inside the timing):

- ``sam2``: ``set_image`` + ``predict`` (SAM2 alone, the reference);
- ``entropy``: SAM2 + the mask entropy of its masks;
- ``augmentations``: SAM2 on the five image versions (five encodings) + the entropy of the mean mask;
- ``prompts``: SAM2 with eight single-point prompts (one batched call) + the entropy of the mean mask;
- ``usam``: :class:`usam.UncertainSAM` with all loaded heads (one encoding, one call).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from usam.entropy import entropy_from_probabilities, mask_entropy
from usam.extraction.augment import augmented_images
from usam.predictor import UncertainSAM

VARIANTS: tuple[str, ...] = ("sam2", "entropy", "augmentations", "prompts", "usam")


def _interleaved_medians(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in rounds (one run of each per round) so drift hits all alike."""
    for function in functions.values():
        function()  # warm-up: first calls allocate memory and pick kernels
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_runtime(model: UncertainSAM, image: np.ndarray, *, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Median seconds per image of each variant of :data:`VARIANTS`.

    Args:
        model: The wrapper; its heads are used by the ``usam`` variant.
        image: H x W x 3 uint8 RGB image.
        repeats: Timed runs per variant (after one warm-up run).
        seed: Seed of the prompt points and the image noise.
    """
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    center = np.array([[width / 2, height / 2]], dtype=np.float32)
    points = np.concatenate([center, rng.uniform([0, 0], [width - 1, height - 1], size=(7, 2))]).astype(np.float32)
    labels = np.ones(1, dtype=np.int32)

    def sam2_alone() -> tuple:
        model.set_image(image)
        return model.predict_masks(point_coords=center, point_labels=labels)

    def with_entropy() -> torch.Tensor:
        return mask_entropy(torch.from_numpy(sam2_alone()[2]))

    def with_augmentations() -> torch.Tensor:
        maps = []
        for version in augmented_images(image, seed=seed, image_key="runtime"):
            model.set_image(version)
            _, scores, logits = model.predict_masks(point_coords=center, point_labels=labels)
            maps.append(torch.sigmoid(torch.from_numpy(logits[np.argmax(scores)])))
        return entropy_from_probabilities(torch.stack(maps).mean(0))

    def with_prompts() -> torch.Tensor:
        model.set_image(image)
        _, scores, logits = model.predict_masks(point_coords=points[:, None], point_labels=np.ones((8, 1)))
        best = torch.from_numpy(logits[np.arange(8), scores.argmax(1)])
        return entropy_from_probabilities(torch.sigmoid(best).mean(0))

    def with_usam() -> Any:
        model.set_image(image)
        return model.predict(point_coords=center, point_labels=labels)

    functions = {
        "sam2": sam2_alone,
        "entropy": with_entropy,
        "augmentations": with_augmentations,
        "prompts": with_prompts,
        "usam": with_usam,
    }
    with torch.no_grad():
        return _interleaved_medians(functions, repeats)
