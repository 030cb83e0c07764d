"""Checks of a trained test-bed model, prompted exactly as usam prompts it (:meth:`usam.UncertainSAM.predict_masks`).

A model built from a card with click-map prompting gets its click map with every click, as everywhere in usam; a
model without one gets the sparse clicks alone.

- :func:`prompt_dependence`: does the model follow the click? The fraction of pixels where the masks for different
  clicks in one image differ. The prototype's prompt-ignoring model had 2e-5, a click-following one 0.067.
- :func:`single_click_miou`: held-out mIoU of the center click (best of the three masks, and SAM's own pick).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
import torch

from usam import sam2_adapter
from usam.extraction.prompts import center_point
from usam.extraction.targets import mask_ious
from usam.predictor import UncertainSAM
from usam.testbed.model_training import SceneLike


def _center_clicks(scene: SceneLike) -> list[np.ndarray]:
    """The distinct center clicks of a scene's targets."""
    clicks = {tuple(center_point(target.mask)) for target in scene.targets}
    return [np.array([click], dtype=np.float32) for click in sorted(clicks)]


def _wrapped(model: torch.nn.Module | UncertainSAM) -> UncertainSAM:
    """The model as usam prompts it: an already wrapped one as it is, a bare SAM2 model in eval mode."""
    if isinstance(model, UncertainSAM):
        return model
    return UncertainSAM(sam2_adapter.make_image_predictor(model.eval()))


def prompt_dependence(model: torch.nn.Module | UncertainSAM, scenes: Sequence[SceneLike]) -> float:
    """Fraction of pixels where the masks for different clicks in one image differ (0: the model ignores clicks).

    Each target's center click is given alone (multimask output); for every pair of clicks in an image the three
    masks are compared output by output. Scenes with fewer than two distinct clicks are skipped.

    Args:
        model: A SAM2 model, or a :class:`usam.UncertainSAM` wrapping one (its image is replaced).
        scenes: The scenes.

    Returns:
        The mean over scenes, click pairs and outputs; NaN if no scene has two distinct clicks.
    """
    wrapper = _wrapped(model)
    fractions = []
    for scene in scenes:
        clicks = _center_clicks(scene)
        if len(clicks) < 2:
            continue
        wrapper.set_image(scene.image)
        masks = [wrapper.predict_masks(point_coords=click, point_labels=np.ones(1))[0] for click in clicks]
        fractions.append(np.mean([np.mean(a != b) for a, b in itertools.combinations(masks, 2)]))
    return float(np.mean(fractions)) if fractions else float("nan")


@dataclasses.dataclass(frozen=True)
class ClickQuality:
    """Held-out quality of single center clicks.

    Attributes:
        best3: Mean IoU of the best of the three masks.
        pick: Mean IoU of the mask SAM's IoU head ranks first.
        count: Number of targets.
    """

    best3: float
    pick: float
    count: int


def single_click_miou(model: torch.nn.Module | UncertainSAM, scenes: Sequence[SceneLike]) -> ClickQuality:
    """Mean IoU of each target's center click (multimask output, full resolution), prompted as usam prompts."""
    wrapper = _wrapped(model)
    best, picked = [], []
    for scene in scenes:
        if not scene.targets:
            continue
        wrapper.set_image(scene.image)
        for target in scene.targets:
            truth = np.asarray(target.mask, dtype=bool)
            click = center_point(truth)[np.newaxis, :]
            masks, scores, _ = wrapper.predict_masks(point_coords=click, point_labels=np.ones(1))
            ious = mask_ious(masks > 0, truth)
            best.append(float(ious.max()))
            picked.append(float(ious[int(np.argmax(scores))]))
    return ClickQuality(float(np.mean(best)), float(np.mean(picked)), len(best))
