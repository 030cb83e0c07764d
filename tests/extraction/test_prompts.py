"""Tests for usam.extraction.prompts: erosion, center click, seeded sampling and user-given clicks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from usam.errors import InvalidInputError
from usam.extraction.prompts import (
    ObjectPrompts,
    center_point,
    erode_mask,
    positive_labels,
    prompt_mask,
    prompt_rng,
    prompts_from_user,
    sample_prompts,
)

cv2 = pytest.importorskip("cv2")


def cv2_erode(mask: np.ndarray) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def brute_force_center(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the region pixel closest to the region's centroid, scanning in row-major order."""
    rows, cols = np.nonzero(region)
    centroid_row, centroid_col = rows.mean(), cols.mean()
    best, best_distance = None, np.inf
    for row in range(region.shape[0]):
        for col in range(region.shape[1]):
            if region[row, col]:
                distance = (row - centroid_row) ** 2 + (col - centroid_col) ** 2
                if distance < best_distance:
                    best, best_distance = (col, row), distance
    return best


# An asymmetric, non-square mask: a 12x9 block in the top-left part of a 20x40 image plus a thin
# horizontal tail to the right that erosion removes.
def asymmetric_mask() -> np.ndarray:
    mask = np.zeros((20, 40), dtype=bool)
    mask[3:15, 5:14] = True
    mask[8, 14:35] = True
    return mask


# --- erosion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (4, 4), (5, 5), (13, 29), (64, 48), (100, 3)])
@pytest.mark.parametrize("density", [0.5, 0.8, 0.95, 1.0])
def test_erode_mask_equals_cv2_on_random_masks(shape, density):
    rng = np.random.default_rng([shape[0], shape[1], int(density * 100)])
    for _ in range(5):
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(erode_mask(mask), cv2_erode(mask))


def test_erode_mask_equals_cv2_on_blobs_touching_the_border():
    rng = np.random.default_rng(0)
    for _ in range(30):
        height, width = rng.integers(6, 40, size=2)
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(3):
            top, left = rng.integers(-5, [height, width])
            mask[max(top, 0) : top + rng.integers(3, 15), max(left, 0) : left + rng.integers(3, 15)] = True
        np.testing.assert_array_equal(erode_mask(mask), cv2_erode(mask))


def test_erode_mask_accepts_numeric_masks_like_bool():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[1:9, 2:11] = 255
    np.testing.assert_array_equal(erode_mask(mask), erode_mask(mask > 0))
    np.testing.assert_array_equal(erode_mask(mask.astype(np.float32)), cv2_erode(mask > 0))


def test_erode_mask_keeps_pixels_at_the_image_border():
    full = np.ones((6, 9), dtype=bool)
    assert erode_mask(full).all()

    # An object filling the left 3 columns survives at the left border: 2 columns of the 5x5 square lie
    # outside the image (foreground) and 3 inside, so column 0 needs columns 0-2 and stays.
    left_band = np.zeros((8, 10), dtype=bool)
    left_band[:, :3] = True
    expected = np.zeros_like(left_band)
    expected[:, 0] = True
    np.testing.assert_array_equal(erode_mask(left_band), expected)


def test_erode_mask_removes_interior_blob_border():
    mask = np.zeros((11, 11), dtype=bool)
    mask[2:9, 2:9] = True  # 7x7 square in the interior
    expected = np.zeros_like(mask)
    expected[4:7, 4:7] = True  # 2 pixels eaten from every side
    np.testing.assert_array_equal(erode_mask(mask), expected)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4)), np.array([[np.nan, 1.0]])])
def test_erode_mask_rejects_invalid_masks(bad):
    with pytest.raises(InvalidInputError):
        erode_mask(bad)


# --- prompt mask ---------------------------------------------------------------------------------------


def test_prompt_mask_is_the_eroded_mask_when_something_survives():
    mask = asymmetric_mask()
    region = prompt_mask(mask)
    np.testing.assert_array_equal(region, cv2_erode(mask))
    assert not region[8, 20]  # the thin tail is gone


def test_prompt_mask_falls_back_to_the_mask_when_erosion_empties_it():
    thin = np.zeros((10, 10), dtype=bool)
    thin[5, 2:8] = True
    assert not erode_mask(thin).any()
    np.testing.assert_array_equal(prompt_mask(thin), thin)


def test_prompt_mask_rejects_an_empty_mask():
    with pytest.raises(InvalidInputError, match="empty mask"):
        prompt_mask(np.zeros((4, 5), dtype=bool))


# --- center point --------------------------------------------------------------------------------------


def test_center_point_is_x_y_of_the_pixel_closest_to_the_centroid():
    mask = asymmetric_mask()
    # Eroded block: rows 5..12, cols 7..11 (the tail is eroded); centroid row 8.5, col 9.
    # Rows 8 and 9 at col 9 are equally close; row-major order picks row 8. As (x, y): (9, 8).
    np.testing.assert_array_equal(center_point(mask), [9.0, 8.0])
    assert center_point(mask).shape == (2,)
    assert center_point(mask).dtype == np.float64


def test_center_point_matches_brute_force_and_is_foreground():
    rng = np.random.default_rng(1)
    for _ in range(40):
        mask = np.zeros((int(rng.integers(5, 30)), int(rng.integers(5, 30))), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            top, left = rng.integers(0, mask.shape)
            mask[top : top + rng.integers(1, 12), left : left + rng.integers(1, 12)] = True
        region = prompt_mask(mask)
        x, y = center_point(mask)
        assert region[int(y), int(x)]
        assert (x, y) == brute_force_center(region)


def test_center_point_of_a_ring_lies_on_the_ring():
    # The centroid of a ring is in its hole; the click must still be on the object.
    mask = np.zeros((21, 21), dtype=bool)
    mask[1:20, 1:20] = True
    mask[7:14, 7:14] = False
    x, y = center_point(mask)
    assert prompt_mask(mask)[int(y), int(x)]


def test_center_point_ties_are_broken_in_row_major_order():
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 2] = mask[2, 0] = True  # centroid (1, 1), both pixels at distance sqrt(2)
    np.testing.assert_array_equal(center_point(mask), [2.0, 0.0])  # row 0 comes first


# --- seeded random generator ---------------------------------------------------------------------------


def test_prompt_rng_is_reproducible_and_distinguishes_its_inputs():
    draw = prompt_rng(0, "img", "1").random(4)
    np.testing.assert_array_equal(draw, prompt_rng(0, "img", "1").random(4))
    assert not np.array_equal(draw, prompt_rng(1, "img", "1").random(4))
    assert not np.array_equal(draw, prompt_rng(0, "img2", "1").random(4))
    assert not np.array_equal(draw, prompt_rng(0, "img", "2").random(4))
    # Parts are kept apart, not concatenated.
    assert not np.array_equal(prompt_rng(0, "a_b", "c").random(4), prompt_rng(0, "a", "b_c").random(4))


def test_prompt_rng_is_the_same_in_another_process():
    # Python's hash() of a str differs between processes; a stable hash must not.
    code = "from usam.extraction.prompts import prompt_rng; print(repr(prompt_rng(7, 'image.jpg', '42').random()))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(other.stdout) == prompt_rng(7, "image.jpg", "42").random()


@pytest.mark.parametrize("bad_seed", [1.5, "0", None, True])
def test_prompt_rng_rejects_a_non_integer_seed(bad_seed):
    with pytest.raises(InvalidInputError, match="seed"):
        prompt_rng(bad_seed, "img", "1")


# --- sampling ------------------------------------------------------------------------------------------


def test_sample_prompts_shapes_dtypes_and_labels():
    prompts = sample_prompts(asymmetric_mask(), seed=0, image_key="img", object_id="1")
    assert prompts.center.shape == (1, 2)
    assert prompts.extra.shape == (7, 2)
    assert prompts.dense.shape == (8, 2)
    assert prompts.center.dtype == prompts.extra.dtype == prompts.dense.dtype == np.float32
    np.testing.assert_array_equal(prompts.dense[0], prompts.center[0])
    np.testing.assert_array_equal(prompts.dense[1:], prompts.extra)
    np.testing.assert_array_equal(prompts.center_labels, np.ones(1, dtype=np.int32))
    np.testing.assert_array_equal(prompts.dense_labels, np.ones(8, dtype=np.int32))
    assert prompts.dense_labels.dtype == np.int32


def test_sample_prompts_center_equals_center_point():
    mask = asymmetric_mask()
    prompts = sample_prompts(mask, seed=3, image_key="img", object_id="1")
    np.testing.assert_array_equal(prompts.center[0], center_point(mask))


def test_sample_prompts_extra_points_lie_in_the_prompt_mask_without_duplicates():
    mask = asymmetric_mask()
    region = prompt_mask(mask)
    for object_id in range(20):
        prompts = sample_prompts(mask, seed=0, image_key="img", object_id=str(object_id))
        for x, y in prompts.extra:
            assert region[int(y), int(x)]
        assert len({tuple(point) for point in prompts.extra.tolist()}) == 7


def test_sample_prompts_without_replacement_when_exactly_enough_pixels():
    mask = np.zeros((10, 10), dtype=bool)
    mask[4, 1:8] = True  # 7 pixels, eroded away -> prompt mask is the mask itself
    prompts = sample_prompts(mask, seed=0, image_key="img", object_id="1")
    assert sorted(map(tuple, prompts.extra.tolist())) == [(float(x), 4.0) for x in range(1, 8)]


def test_sample_prompts_repeats_points_only_when_the_prompt_mask_is_too_small():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2, 3] = mask[6, 8] = mask[7, 1] = True  # 3 pixels < 7
    prompts = sample_prompts(mask, seed=0, image_key="img", object_id="1")
    assert prompts.extra.shape == (7, 2)
    assert {tuple(point) for point in prompts.extra.tolist()} <= {(3.0, 2.0), (8.0, 6.0), (1.0, 7.0)}
    assert len({tuple(point) for point in prompts.extra.tolist()}) < 7


def test_sample_prompts_single_pixel_mask():
    mask = np.zeros((4, 6), dtype=bool)
    mask[1, 4] = True
    prompts = sample_prompts(mask, seed=0, image_key="img", object_id="1")
    np.testing.assert_array_equal(prompts.dense, np.tile([[4.0, 1.0]], (8, 1)))


def test_sample_prompts_do_not_depend_on_call_order():
    mask = asymmetric_mask()
    other_mask = np.ones((30, 30), dtype=bool)
    first = sample_prompts(mask, seed=5, image_key="a.jpg", object_id="17")
    for object_id in ("1", "2", "3"):  # unrelated draws in between must not matter
        sample_prompts(other_mask, seed=5, image_key="b.jpg", object_id=object_id)
    second = sample_prompts(mask, seed=5, image_key="a.jpg", object_id="17")
    np.testing.assert_array_equal(first.dense, second.dense)


def test_sample_prompts_differ_between_objects_and_seeds():
    mask = np.ones((50, 50), dtype=bool)
    reference = sample_prompts(mask, seed=0, image_key="img", object_id="1").extra
    assert not np.array_equal(reference, sample_prompts(mask, seed=0, image_key="img", object_id="2").extra)
    assert not np.array_equal(reference, sample_prompts(mask, seed=1, image_key="img", object_id="1").extra)


def test_sample_prompts_coordinates_are_x_then_y():
    # Foreground only in one tall column strip at x = 30..32 of a wide image: every x must be near 31,
    # every y anywhere in 0..19. Swapped coordinates would put x in 0..19.
    mask = np.zeros((20, 40), dtype=bool)
    mask[:, 29:34] = True
    prompts = sample_prompts(mask, seed=0, image_key="img", object_id="1")
    region = prompt_mask(mask)
    assert np.all(prompts.dense[:, 0] == 31)
    assert np.all((prompts.dense[:, 1] >= 0) & (prompts.dense[:, 1] < 20))
    for x, y in prompts.dense:
        assert region[int(y), int(x)]


def test_sample_prompts_custom_num_extra():
    mask = np.ones((10, 10), dtype=bool)
    assert sample_prompts(mask, seed=0, image_key="i", object_id="o", num_extra=0).dense.shape == (1, 2)
    assert sample_prompts(mask, seed=0, image_key="i", object_id="o", num_extra=3).extra.shape == (3, 2)
    with pytest.raises(InvalidInputError, match="num_extra"):
        sample_prompts(mask, seed=0, image_key="i", object_id="o", num_extra=-1)


def test_sample_prompts_rejects_an_empty_mask():
    with pytest.raises(InvalidInputError):
        sample_prompts(np.zeros((5, 5)), seed=0, image_key="img", object_id="1")


# --- user-given prompts --------------------------------------------------------------------------------


def test_prompts_from_user_splits_center_and_extra():
    prompts = prompts_from_user([[10, 20], [11.5, 21], [3, 4]])
    np.testing.assert_array_equal(prompts.center, [[10, 20]])
    np.testing.assert_array_equal(prompts.extra, [[11.5, 21], [3, 4]])
    assert prompts.dense.dtype == np.float32
    np.testing.assert_array_equal(prompts.dense_labels, [1, 1, 1])


def test_prompts_from_user_accepts_a_single_click():
    for points in ([5, 6], [[5, 6]]):
        prompts = prompts_from_user(points)
        np.testing.assert_array_equal(prompts.dense, [[5, 6]])
        assert prompts.extra.shape == (0, 2)


@pytest.mark.parametrize(
    "bad",
    [[], np.zeros((0, 2)), [[1, 2, 3]], [1, 2, 3], [[np.nan, 1]], [[np.inf, 1]], [["a", "b"]], [[[1, 2]]]],
)
def test_prompts_from_user_rejects_invalid_clicks(bad):
    with pytest.raises(InvalidInputError):
        prompts_from_user(bad)


def test_object_prompts_validates_its_fields():
    with pytest.raises(InvalidInputError, match="center"):
        ObjectPrompts(center=np.zeros((2, 2)), extra=np.zeros((7, 2)))
    with pytest.raises(InvalidInputError, match="extra"):
        ObjectPrompts(center=np.zeros((1, 2)), extra=np.zeros((7, 3)))


def test_positive_labels():
    np.testing.assert_array_equal(positive_labels(3), np.array([1, 1, 1], dtype=np.int32))
    assert positive_labels(0).shape == (0,)
    with pytest.raises(InvalidInputError):
        positive_labels(-1)
