"""Training prompts of the test-bed: the mix of prompt kinds, where clicks and boxes fall, and click maps."""

from __future__ import annotations

import numpy as np
import pytest

from usam.click_map import CLICK_MAP_AMPLITUDE
from usam.errors import InvalidInputError
from usam.extraction.prompts import center_point
from usam.testbed.prompts import (
    MAX_CLICKS,
    MIN_CLICKS,
    PromptKind,
    TrainingPrompt,
    click_map,
    sample_training_prompt,
)


def _mask() -> np.ndarray:
    mask = np.zeros((128, 128), dtype=bool)
    mask[30:90, 20:70] = True
    return mask


def test_prompt_kinds_and_center_clicks_follow_the_recipe_proportions():
    rng = np.random.default_rng(0)
    mask = _mask()
    center = center_point(mask)
    prompts = [sample_training_prompt(mask, rng) for _ in range(4000)]
    share = {kind: np.mean([p.kind is kind for p in prompts]) for kind in PromptKind}
    assert share[PromptKind.ONE_CLICK] == pytest.approx(0.5, abs=0.03)
    assert share[PromptKind.CLICKS] == pytest.approx(0.3, abs=0.03)
    assert share[PromptKind.BOX] == pytest.approx(0.2, abs=0.03)
    singles = [p for p in prompts if p.kind is PromptKind.ONE_CLICK]
    at_center = np.mean([np.array_equal(p.points[0], center) for p in singles])
    # 30 % by design, plus the rare uniform click that lands on the center pixel (1 in 3,000 pixels).
    assert at_center == pytest.approx(0.3, abs=0.04)
    counts = [len(p.points) for p in prompts if p.kind is PromptKind.CLICKS]
    assert min(counts) == MIN_CLICKS
    assert max(counts) == MAX_CLICKS
    assert set(np.bincount(counts)[MIN_CLICKS:] > 0) == {True}


def test_clicks_lie_in_the_mask_and_boxes_are_jittered_around_it_inside_the_image():
    rng = np.random.default_rng(1)
    mask = _mask()
    prompts = [sample_training_prompt(mask, rng) for _ in range(500)]
    for prompt in prompts:
        if prompt.kind is PromptKind.BOX:
            assert prompt.points.shape == (0, 2)
            assert prompt.num_point_slots == 2
            assert 0 <= prompt.box[0] <= prompt.box[2] <= 127
            assert 0 <= prompt.box[1] <= prompt.box[3] <= 127
        else:
            xs, ys = prompt.points[:, 0].astype(int), prompt.points[:, 1].astype(int)
            assert mask[ys, xs].all()
            assert prompt.num_point_slots == len(prompt.points)
    boxes = np.array([p.box for p in prompts if p.kind is PromptKind.BOX])
    truth = np.array([20, 30, 69, 89])
    assert not np.allclose(boxes, truth)  # jittered ...
    assert np.abs(boxes.mean(axis=0) - truth).max() < 3  # ... around the true box


def test_an_empty_mask_is_refused():
    with pytest.raises(InvalidInputError):
        sample_training_prompt(np.zeros((8, 8), dtype=bool), np.random.default_rng(0))


def test_click_map_peaks_at_the_clicks_and_fills_the_box():
    clicks = TrainingPrompt(PromptKind.CLICKS, np.array([[17.5, 49.5], [101.5, 101.5]], dtype=np.float32))
    dense = click_map(clicks, 32, 128)
    assert dense.shape == (32, 32)
    assert dense[12, 4] == pytest.approx(
        CLICK_MAP_AMPLITUDE, rel=0.05
    )  # a click is its pixel centre: (18, 50) px is the centre of cell (12, 4)
    assert dense[25, 25] == pytest.approx(CLICK_MAP_AMPLITUDE, rel=0.05)
    assert dense[0, 31] < 1e-3
    box = TrainingPrompt(PromptKind.BOX, np.zeros((0, 2), np.float32), np.array([8, 16, 39, 63], np.float32))
    filled = click_map(box, 32, 128)
    assert (filled[4:16, 2:10] == CLICK_MAP_AMPLITUDE).all()
    assert filled.sum() == CLICK_MAP_AMPLITUDE * 12 * 8
