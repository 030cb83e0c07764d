import sys

import numpy as np
import pytest

from conftest import build_small_sam2
from usam import sam2_adapter
from usam.errors import HeadsFileError, InvalidInputError
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.uses.next_click import (
    ClickStrategy,
    check_threshold,
    disagreement_region,
    distance_to_outside,
    error_region_click,
    farthest_inside_point,
    most_uncertain_pixel,
    propose_click,
    propose_next_click,
)


def brute_force_distance(region):
    padded = np.pad(region, 1)
    rows, columns = np.nonzero(~padded)
    grid_rows, grid_columns = np.mgrid[: padded.shape[0], : padded.shape[1]]
    squared = ((grid_rows[..., None] - rows) ** 2 + (grid_columns[..., None] - columns) ** 2).min(axis=-1)
    return np.sqrt(squared)[1:-1, 1:-1]


@pytest.mark.parametrize("opencv", [True, False])
def test_distance_to_outside_is_exact_with_and_without_opencv(opencv, monkeypatch):
    if not opencv:
        monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    rng = np.random.default_rng(3)
    for _ in range(12):
        shape = tuple(int(side) for side in rng.integers(1, 25, size=2))
        region = rng.random(shape) < rng.uniform(0.3, 0.95)
        np.testing.assert_allclose(distance_to_outside(region), brute_force_distance(region), rtol=1e-6)


def test_distance_ties_are_exact_ties():
    # Two equally wide squares: their centres are exactly equally far inside, so the first in row-major order wins.
    region = np.zeros((20, 40), bool)
    region[2:9, 25:32] = True
    region[10:17, 3:10] = True
    distance = distance_to_outside(region)
    assert distance[5, 28] == distance[13, 6]
    assert farthest_inside_point(region).tolist() == [28, 5]


def test_most_uncertain_pixel_finds_the_known_maximum_outside_excluded_pixels():
    values = np.random.default_rng(0).random((30, 40)) * 0.5
    values[7, 33] = 0.99
    values[20, 4] = 0.9
    assert most_uncertain_pixel(values).tolist() == [33, 7]
    excluded = np.zeros_like(values, dtype=bool)
    excluded[5:10, 30:36] = True
    assert most_uncertain_pixel(values, excluded).tolist() == [4, 20]


def test_uncertain_region_proposes_the_centre_of_the_wide_band_not_the_spike():
    uncertainty = np.zeros((40, 60))
    uncertainty[10:21, 35:46] = 0.8  # an 11 x 11 uncertain region centred at (40, 15)
    uncertainty[35, 5] = 1.0  # the single most uncertain pixel
    mask = np.zeros((40, 60), bool)
    assert propose_click("uncertain-pixel", mask=mask, uncertainty_map=uncertainty).tolist() == [5, 35]
    assert propose_click("uncertain-region", mask=mask, uncertainty_map=uncertainty).tolist() == [40, 15]


def test_disagreement_proposes_the_centre_of_the_disagreement_and_skips_earlier_clicks():
    masks = np.zeros((3, 50, 50), bool)
    masks[:, 5:15, 5:15] = True  # all agree here
    masks[0, 20:45, 20:45] = True  # only the first output: disagreement centred at (32, 32)
    region = disagreement_region(masks)
    assert region[30, 30]
    assert not region[10, 10]
    uncertainty = np.zeros((50, 50))
    point = propose_click("disagreement", mask=masks[0], uncertainty_map=uncertainty, three_masks=masks)
    assert point.tolist() == [32, 32]
    moved = propose_click(
        "disagreement", mask=masks[0], uncertainty_map=uncertainty, three_masks=masks, clicks=np.array([[32, 32]])
    )
    assert region[moved[1], moved[0]]
    assert np.hypot(*(moved - 32)) > 1.0


def test_error_region_click_is_at_the_centre_of_the_larger_error():
    truth = np.zeros((40, 40), bool)
    truth[10:31, 10:31] = True
    mask = truth.copy()
    mask[10:31, 20:31] = False  # missed: the 21 x 11 block x 20..30, centre x = 25, rows 15..25 equally deep
    mask[0:3, 0:3] = True  # a small spill
    point = error_region_click(mask, truth)
    assert point[0] == 25
    assert truth[point[1], point[0]]
    spill = truth.copy()
    spill[0:9, 0:40] = True  # a wide false positive above the object, 5 deep at row 4 (cols 4..35 tie)
    point = error_region_click(spill, truth)
    assert not truth[point[1], point[0]]
    assert point.tolist() == [4, 4]  # ties: the first in row-major order, as RITM
    assert error_region_click(truth, truth) is None


def test_random_clicks_are_inside_the_image_and_seeded():
    mask = np.zeros((17, 23), bool)
    first = [propose_click("random", mask=mask, rng=np.random.default_rng(5)) for _ in range(3)]
    again = [propose_click("random", mask=mask, rng=np.random.default_rng(5)) for _ in range(3)]
    assert [p.tolist() for p in first] == [p.tolist() for p in again]
    rng = np.random.default_rng(1)
    points = np.array([propose_click("random", mask=mask, rng=rng) for _ in range(300)])
    assert points[:, 0].min() >= 0
    assert points[:, 0].max() <= 22
    assert points[:, 1].max() <= 16
    assert points[:, 0].max() > 15  # spread over the image, not stuck in a corner


def test_missing_inputs_and_bad_thresholds_are_clear_errors():
    mask = np.zeros((8, 8), bool)
    with pytest.raises(InvalidInputError, match="truth"):
        propose_click("error-region", mask=mask)
    with pytest.raises(InvalidInputError, match="uncertainty map"):
        propose_click("uncertain-region", mask=mask)
    with pytest.raises(InvalidInputError, match="three multimask"):
        propose_click("disagreement", mask=mask, uncertainty_map=np.zeros((8, 8)))
    with pytest.raises(InvalidInputError, match="strategy must be one of"):
        propose_click("nowhere", mask=mask)
    for bad in (0.7, -0.51, float("nan"), "0.1"):
        with pytest.raises(InvalidInputError, match="threshold"):
            check_threshold(bad)


@pytest.fixture(scope="module")
def small_model():
    return UncertainSAM(
        sam2_adapter.make_image_predictor(build_small_sam2()), random_heads(seed=1, sam2_version="sam2.1")
    )


def test_propose_next_click_on_a_random_weight_model(small_model, rgb_image):
    small_model.set_image(rgb_image)
    for strategy in ("uncertain-pixel", "uncertain-region", "disagreement", "random"):
        proposal = propose_next_click(small_model, [[60, 50]], [1], strategy=strategy, threshold=0.0)
        x, y = proposal.point
        assert 0 <= x < rgb_image.shape[1]
        assert 0 <= y < rgb_image.shape[0]
        assert proposal.needed == (proposal.prompt_gap > 0.0)
        assert proposal.prediction.masks.shape[0] == 3  # one click: SAM's three masks
    two = propose_next_click(small_model, [[60, 50], [10, 10]], [1, 0], mask_choice="sam")
    assert two.prediction.masks.shape[0] == 1
    assert two.mask_index == 0


def test_propose_next_click_refuses_bad_thresholds_and_incompatible_heads(rgb_image):
    predictor = sam2_adapter.make_image_predictor(build_small_sam2())
    no_gap = UncertainSAM(predictor, random_heads(["iou_tiny", "task_gap"], sam2_version="sam2.1"))
    no_gap.set_image(rgb_image)
    with pytest.raises(HeadsFileError, match="prompt_gap"):
        propose_next_click(no_gap, [[60, 50]], [1])
    no_size_head = UncertainSAM(predictor, random_heads(["prompt_gap", "iou_large"], sam2_version="sam2.1"))
    with pytest.raises(HeadsFileError, match="iou_tiny"):
        propose_next_click(no_size_head, [[60, 50]], [1])
    assert propose_next_click(no_size_head, [[60, 50]], [1], mask_choice="sam").point.shape == (2,)
    with pytest.raises(InvalidInputError, match="threshold"):
        propose_next_click(no_size_head, [[60, 50]], [1], threshold=2.0, mask_choice="sam")
    with pytest.raises(InvalidInputError, match="needs the truth"):
        propose_next_click(no_size_head, [[60, 50]], [1], strategy=ClickStrategy.ERROR_REGION, mask_choice="sam")
