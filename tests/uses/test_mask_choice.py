"""Tests for usam.uses.mask_choice."""

from __future__ import annotations

import numpy as np
import pytest

from usam import sam2_adapter
from usam.errors import HeadsFileError, InvalidInputError
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.uses import choose_masks

BOXES = np.array([[10, 10, 60, 50], [40, 30, 110, 90], [0, 0, 119, 95]], np.float32)


@pytest.fixture
def tiny(small_sam2):
    heads = random_heads(["iou_tiny", "iou_large", "task_gap"], seed=1, sam2_version="sam2.1")
    return UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), heads)


def test_picks_the_mask_with_the_highest_predicted_iou(tiny, rgb_image):
    tiny.set_image(rgb_image)
    prediction = tiny.predict(box=BOXES)
    choice = choose_masks(prediction, tiny, task_gap_threshold=0.0)
    predicted = prediction.uncertainty["iou_tiny"]
    assert choice.iou_head == "iou_tiny"
    np.testing.assert_array_equal(choice.index, predicted.argmax(axis=1))
    np.testing.assert_array_equal(choice.sam_index, prediction.sam_scores.argmax(axis=1))
    np.testing.assert_allclose(choice.predicted_iou, predicted.max(axis=1))
    gap_at_pick = prediction.uncertainty["task_gap"][np.arange(len(BOXES)), choice.index]
    np.testing.assert_allclose(choice.task_gap, gap_at_pick)
    np.testing.assert_array_equal(choice.show_all_masks, gap_at_pick > 0.0)
    other = choose_masks(prediction, tiny, iou_head="iou_large")
    np.testing.assert_array_equal(other.index, prediction.uncertainty["iou_large"].argmax(axis=1))


def test_single_prompt_gives_scalars_and_flag_follows_threshold(tiny, rgb_image):
    tiny.set_image(rgb_image)
    prediction = tiny.predict(point_coords=[[60, 50]], point_labels=[1])
    gap = float(choose_masks(prediction, tiny).task_gap)
    assert choose_masks(prediction, tiny, task_gap_threshold=gap - 1e-3).show_all_masks
    assert not choose_masks(prediction, tiny, task_gap_threshold=gap + 1e-3).show_all_masks
    assert np.ndim(choose_masks(prediction, tiny).index) == 0


def test_missing_or_wrong_heads_and_bad_thresholds(small_sam2, tiny, rgb_image):
    tiny.set_image(rgb_image)
    prediction = tiny.predict(box=BOXES)
    with pytest.raises(HeadsFileError, match="needs an IoU head"):
        choose_masks(prediction, tiny, iou_head="task_gap")
    with pytest.raises(HeadsFileError, match="iou_small"):
        choose_masks(prediction, tiny, iou_head="iou_small")
    with pytest.raises(InvalidInputError, match="task gap threshold"):
        choose_masks(prediction, tiny, task_gap_threshold=0.7)
    bare = UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), random_heads(["model_gap"]))
    with pytest.raises(HeadsFileError, match="needs the head\\(s\\) iou_tiny"):
        choose_masks(prediction, bare)
    no_gap = UncertainSAM(sam2_adapter.make_image_predictor(small_sam2), random_heads(["iou_tiny"]))
    choice = choose_masks(prediction, no_gap)
    assert choice.task_gap is None
    assert choice.show_all_masks is None
