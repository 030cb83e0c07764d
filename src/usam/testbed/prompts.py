"""Prompts for training test-bed models: clicks and jittered boxes drawn for a target mask, and their click maps.

The mix follows the prototype's recipe (and roughly SAM's): half single clicks (30 % of them at the paper's center
click, :func:`usam.extraction.prompts.center_point`, the rest uniform in the mask), 30 % two to eight clicks uniform
in the mask, 20 % boxes jittered by 10 % of their size. All coordinates are SAM2's (x, y) pixels.

The *click map* is a dense form of a prompt for SAM's mask-prompt input (Gaussians at the clicks, a filled box): it
is a training aid (see :mod:`usam.testbed.model_training`); :mod:`usam.click_map` builds it, also for models whose
card asks for it with every prompt.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usam.click_map import click_map as dense_click_map
from usam.errors import InvalidInputError
from usam.extraction.prompts import center_point
from usam.validation import StrEnum


class PromptKind(StrEnum):
    """What a training prompt is made of."""

    ONE_CLICK = "one_click"
    CLICKS = "clicks"
    BOX = "box"


PROMPT_KIND_SHARES: dict[PromptKind, float] = {PromptKind.ONE_CLICK: 0.5, PromptKind.CLICKS: 0.3, PromptKind.BOX: 0.2}
"""How often each kind of prompt is drawn."""

CENTER_CLICK_SHARE = 0.3
"""Share of single clicks placed at the center click (the rest are uniform in the mask)."""

MIN_CLICKS, MAX_CLICKS = 2, 8
"""Range of the number of clicks of a multi-click prompt."""

BOX_JITTER = 0.1
"""Standard deviation of each box coordinate's noise, as a fraction of the box's width or height."""


@dataclasses.dataclass(frozen=True)
class TrainingPrompt:
    """One prompt for one target.

    Attributes:
        kind: What the prompt is made of.
        points: (K, 2) float32 positive clicks as (x, y); empty for a box.
        box: (4,) float32 box (x0, y0, x1, y1), or None for clicks.
    """

    kind: PromptKind
    points: np.ndarray
    box: np.ndarray | None = None

    @property
    def num_point_slots(self) -> int:
        """How many point tokens the prompt becomes (a box is two corner points, as in SAM2's predictor)."""
        return 2 if self.kind is PromptKind.BOX else len(self.points)


def _uniform_clicks(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    chosen = rng.choice(len(rows), size=count, replace=len(rows) < count)
    return np.stack([cols[chosen], rows[chosen]], axis=1).astype(np.float32)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = BOX_JITTER) -> np.ndarray:
    """The mask's bounding box (x0, y0, x1, y1) with Gaussian noise of ``jitter`` times its size, kept in the image."""
    rows, cols = np.nonzero(mask)
    x0, x1, y0, y1 = cols.min(), cols.max(), rows.min(), rows.max()
    width, height = x1 - x0 + 1, y1 - y0 + 1
    noise = rng.normal(0.0, jitter, size=4) * np.array([width, height, width, height])
    box = np.array([x0, y0, x1, y1], dtype=np.float64) + noise
    box[[0, 2]] = np.clip(np.sort(box[[0, 2]]), 0, mask.shape[1] - 1)
    box[[1, 3]] = np.clip(np.sort(box[[1, 3]]), 0, mask.shape[0] - 1)
    return box.astype(np.float32)


def sample_training_prompt(mask: np.ndarray, rng: np.random.Generator) -> TrainingPrompt:
    """Draw one training prompt for a target mask (see the module docstring for the mix).

    Raises:
        InvalidInputError: The mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InvalidInputError("cannot draw a prompt for an empty target mask")
    kinds = list(PROMPT_KIND_SHARES)
    kind = kinds[rng.choice(len(kinds), p=list(PROMPT_KIND_SHARES.values()))]
    no_points = np.zeros((0, 2), dtype=np.float32)
    if kind is PromptKind.BOX:
        return TrainingPrompt(kind, no_points, jittered_box(mask, rng))
    if kind is PromptKind.CLICKS:
        count = int(rng.integers(MIN_CLICKS, MAX_CLICKS + 1))
        return TrainingPrompt(kind, _uniform_clicks(mask, count, rng))
    if rng.random() < CENTER_CLICK_SHARE:
        return TrainingPrompt(kind, center_point(mask)[np.newaxis, :].astype(np.float32))
    return TrainingPrompt(kind, _uniform_clicks(mask, 1, rng))


def click_map(prompt: TrainingPrompt, map_size: int, image_size: int) -> np.ndarray:
    """The dense form of a training prompt at SAM's mask-input resolution (see :func:`usam.click_map.click_map`).

    Args:
        prompt: The prompt, in pixels of a square image of side ``image_size`` (the model's input size).
        map_size: Side of the map (SAM2's mask input: a quarter of the model's image size).
        image_size: Side of the image the prompt's coordinates refer to.

    Returns:
        (map_size, map_size) float32 logits: the amplitude at a click or inside the box, 0 far away.
    """
    box = prompt.box if prompt.kind is PromptKind.BOX else None
    return dense_click_map(prompt.points, box, map_size=map_size, image_hw=(image_size, image_size))
