"""Tests for usam.metrics on small cases whose expected numbers are worked out by hand in comments."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from usam.errors import InvalidInputError
from usam.metrics import (
    CORRECTION_SCENARIOS,
    CorrectionScenario,
    Curve,
    area_under_curve,
    corrected_counts,
    correction_curve,
    no_correction_curve,
    oracle_curve,
    pearson_matrix,
    random_curve,
    relative_auc,
)

# Four objects used throughout. Mean base IoU 2.0 / 4 = 0.5, fully corrected 3.0 / 4 = 0.75.
BASE = np.array([0.2, 0.4, 0.6, 0.8])
CORRECTED = np.array([1.0, 0.5, 0.6, 0.9])
# Gains:                0.8  0.1  0.0  0.1
QUARTERS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])

# Uncertainty ranking objects 0, 2, 3, 1 (most to least uncertain).
UNCERTAINTY = np.array([0.9, 0.1, 0.5, 0.3])
# k=0: 2.0/4 = 0.5; k=1: +0.8 -> 0.7; k=2: +0.0 -> 0.7; k=3: +0.1 -> 0.725; k=4: +0.1 -> 0.75
EXPECTED_CURVE = [0.5, 0.7, 0.7, 0.725, 0.75]
# Oracle gains in order 0.8, 0.1, 0.1, 0.0
EXPECTED_ORACLE = [0.5, 0.7, 0.725, 0.75, 0.75]
# Worst order: gains 0.0, then the 0.1 tie, then 0.8
EXPECTED_REVERSED = [0.5, 0.5, 0.525, 0.55, 0.75]

# Trapezoids with step 0.25 over [0, 1]:
# curve:    0.25 * (0.6 + 0.7 + 0.7125 + 0.7375) = 0.6875
# oracle:   0.25 * (0.6 + 0.7125 + 0.7375 + 0.75) = 0.7
# reversed: 0.25 * (0.5 + 0.5125 + 0.5375 + 0.65) = 0.55
# random (straight line 0.5 -> 0.75): 0.625; none: 0.5
AUC_CURVE, AUC_ORACLE, AUC_REVERSED, AUC_RANDOM, AUC_NONE = 0.6875, 0.7, 0.55, 0.625, 0.5


# --- correction curve ----------------------------------------------------------------------------------


def test_correction_curve_hand_computed():
    fractions, mean_iou = correction_curve(BASE, CORRECTED, UNCERTAINTY, fractions=QUARTERS)
    np.testing.assert_array_equal(fractions, QUARTERS)
    np.testing.assert_allclose(mean_iou, EXPECTED_CURVE)


def test_correction_curve_returns_a_named_curve_on_a_default_grid():
    curve = correction_curve(BASE, CORRECTED, UNCERTAINTY)
    assert isinstance(curve, Curve)
    assert curve.fractions.shape == curve.mean_iou.shape == (101,)
    assert curve.fractions[0] == 0.0
    assert curve.fractions[-1] == 1.0
    # r = 0.13 -> 0.52 objects -> 1 object corrected; r = 0.12 -> 0.48 -> none.
    assert curve.mean_iou[12] == pytest.approx(0.5)
    assert curve.mean_iou[13] == pytest.approx(0.7)
    assert len(correction_curve(BASE, CORRECTED, UNCERTAINTY, num_points=5).fractions) == 5


def test_correction_curve_lower_is_uncertain_flips_the_order():
    confidence = 1.0 - UNCERTAINTY  # ranks the same objects first when low values count as uncertain
    _, flipped = correction_curve(BASE, CORRECTED, confidence, fractions=QUARTERS, higher_is_uncertain=False)
    np.testing.assert_allclose(flipped, EXPECTED_CURVE)
    # Taken as an uncertainty instead, the confidence corrects objects 1, 3, 2, 0: gains 0.1, 0.1, 0.0, 0.8.
    _, as_uncertainty = correction_curve(BASE, CORRECTED, confidence, fractions=QUARTERS)
    np.testing.assert_allclose(as_uncertainty, [0.5, 0.525, 0.55, 0.55, 0.75])


def test_correction_curve_all_equal_scores_give_the_straight_line():
    # Expected value over tie orders: each object carries the mean gain 1.0 / 4 = 0.25, over N = 4 objects
    # that is 0.0625 of mean IoU per corrected object, whatever the input order.
    for base, corrected in [(BASE, CORRECTED), (CORRECTED[::-1] * 0, CORRECTED[::-1])]:
        _, mean_iou = correction_curve(base, corrected, np.full(4, 0.3), fractions=QUARTERS)
        expected = base.mean() + QUARTERS * (corrected.mean() - base.mean())
        np.testing.assert_allclose(mean_iou, expected)
    _, mean_iou = correction_curve(BASE, CORRECTED, np.zeros(4), fractions=QUARTERS, higher_is_uncertain=False)
    np.testing.assert_allclose(mean_iou, [0.5, 0.5625, 0.625, 0.6875, 0.75])


def test_correction_curve_partial_tie_uses_the_expected_gain():
    base = np.array([0.5, 0.5, 0.2])
    corrected = np.array([1.0, 0.5, 0.5])  # gains 0.5, 0.0, 0.3
    uncertainty = np.array([0.5, 0.5, 0.9])  # object 2 first, then a tie of objects 0 and 1
    thirds = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    # Sum of base 1.2. k=0: 0.4; k=1: (1.2 + 0.3)/3 = 0.5;
    # k=2: one of the tie corrected, expected gain (0.5 + 0.0)/2 = 0.25 -> (1.5 + 0.25)/3 = 0.58333...;
    # k=3: (1.2 + 0.8)/3 = 0.66666...
    _, mean_iou = correction_curve(base, corrected, uncertainty, fractions=thirds)
    np.testing.assert_allclose(mean_iou, [0.4, 0.5, 1.75 / 3, 2.0 / 3])
    # Swapping the tied objects in the input changes nothing.
    swap = [1, 0, 2]
    _, swapped = correction_curve(base[swap], corrected[swap], uncertainty[swap], fractions=thirds)
    np.testing.assert_allclose(swapped, mean_iou)


def test_correction_curve_accepts_infinite_uncertainty():
    uncertainty = np.array([np.inf, -np.inf, 0.5, 0.3])  # same ranking as UNCERTAINTY
    _, mean_iou = correction_curve(BASE, CORRECTED, uncertainty, fractions=QUARTERS)
    np.testing.assert_allclose(mean_iou, EXPECTED_CURVE)


def test_correction_curve_single_object():
    _, mean_iou = correction_curve([0.25], [0.75], [1.0], fractions=[0.0, 0.4, 0.5, 1.0])
    # counts floor(0 + .5) = 0, floor(0.4 + .5) = 0, floor(0.5 + .5) = 1, 1
    np.testing.assert_allclose(mean_iou, [0.25, 0.25, 0.75, 0.75])


def test_corrected_counts_round_half_up():
    # r·N = 0, 0.4, 0.5, 1.0, 1.5, 2.0
    np.testing.assert_array_equal(corrected_counts(np.array([0, 0.2, 0.25, 0.5, 0.75, 1.0]), 2), [0, 0, 1, 1, 2, 2])
    # 0.285 * 100 evaluates to 28.499999999999996 in floating point; it is meant as 28.5 -> 29.
    np.testing.assert_array_equal(corrected_counts(np.array([0.285, 0.145, 0.575]), 100), [29, 15, 58])


def test_correction_curve_rejects_empty_input():
    with pytest.raises(InvalidInputError, match="at least one object"):
        correction_curve([], [], [])
    with pytest.raises(InvalidInputError, match="at least one object"):
        oracle_curve([], [])


@pytest.mark.parametrize(
    ("base", "corrected", "uncertainty", "message"),
    [
        ([0.1, np.nan], [0.2, 0.3], [1.0, 2.0], "base_iou contains NaN"),
        ([0.1, 0.2], [0.2, np.nan], [1.0, 2.0], "corrected_iou contains NaN"),
        ([0.1, 0.2], [0.2, 0.3], [np.nan, 2.0], "uncertainty contains NaN"),
        ([0.1, np.inf], [0.2, 0.3], [1.0, 2.0], "base_iou contains infinity"),
        ([0.1, 0.2], [0.2, 0.3, 0.4], [1.0, 2.0], "one value per object"),
        ([0.1, 0.2], [0.2, 0.3], [1.0], "one value per object"),
        ([[0.1, 0.2]], [[0.2, 0.3]], [[1.0, 2.0]], "1-D"),
    ],
)
def test_correction_curve_rejects_invalid_input(base, corrected, uncertainty, message):
    with pytest.raises(InvalidInputError, match=message):
        correction_curve(base, corrected, uncertainty)


@pytest.mark.parametrize(
    ("fractions", "num_points"),
    [([0.5, 0.2], 101), ([0.0, 1.5], 101), ([-0.1, 0.5], 101), ([], 101), (None, 1), (None, 2.5)],
)
def test_correction_curve_rejects_invalid_fractions(fractions, num_points):
    with pytest.raises(InvalidInputError):
        correction_curve(BASE, CORRECTED, UNCERTAINTY, fractions=fractions, num_points=num_points)


# --- reference curves ----------------------------------------------------------------------------------


def test_oracle_curve_hand_computed():
    _, mean_iou = oracle_curve(BASE, CORRECTED, fractions=QUARTERS)
    np.testing.assert_allclose(mean_iou, EXPECTED_ORACLE)


def test_no_correction_curve_is_the_mean_base_iou():
    fractions, mean_iou = no_correction_curve(BASE, fractions=QUARTERS)
    np.testing.assert_array_equal(fractions, QUARTERS)
    np.testing.assert_allclose(mean_iou, np.full(5, 0.5))


def test_random_curve_is_reproducible_and_ends_at_the_fixed_points():
    rng = np.random.default_rng(0)
    base, corrected = rng.random(50), rng.random(50)
    first = random_curve(base, corrected, num_seeds=3, seed=7)
    np.testing.assert_array_equal(first.mean_iou, random_curve(base, corrected, num_seeds=3, seed=7).mean_iou)
    assert not np.array_equal(first.mean_iou, random_curve(base, corrected, num_seeds=3, seed=8).mean_iou)
    assert first.mean_iou[0] == pytest.approx(base.mean())
    assert first.mean_iou[-1] == pytest.approx(corrected.mean())


def test_random_curve_is_the_mean_of_correction_curves_of_its_orders_to_the_last_bit():
    # random_curve skips the sort (a permutation's ascending order is its inverse); the numbers must not change.
    rng = np.random.default_rng(3)
    base, corrected = rng.random(301), rng.random(301)
    fractions = np.linspace(0, 1, 101)
    orders = [np.random.default_rng([5, index]).permutation(301) for index in range(4)]
    expected = np.mean([correction_curve(base, corrected, order, fractions=fractions).mean_iou for order in orders], 0)
    np.testing.assert_array_equal(random_curve(base, corrected, num_seeds=4, seed=5, fractions=fractions).mean_iou,
                                  expected)  # fmt: skip


def test_random_curve_averages_to_the_straight_line():
    _, mean_iou = random_curve(BASE, CORRECTED, num_seeds=4000, fractions=QUARTERS)
    np.testing.assert_allclose(mean_iou, [0.5, 0.5625, 0.625, 0.6875, 0.75], atol=0.01)


def test_random_curve_rejects_invalid_num_seeds():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InvalidInputError, match="num_seeds"):
            random_curve(BASE, CORRECTED, num_seeds=bad)


# --- areas ---------------------------------------------------------------------------------------------


def test_area_under_curve_hand_computed():
    assert area_under_curve(QUARTERS, EXPECTED_CURVE) == pytest.approx(AUC_CURVE)
    assert area_under_curve(QUARTERS, EXPECTED_ORACLE) == pytest.approx(AUC_ORACLE)
    assert area_under_curve([0.0, 1.0], [1.0, 1.0]) == pytest.approx(1.0)


def test_area_under_curve_up_to_half():
    # Over [0, 0.5]: 0.25 * (0.6 + 0.7) = 0.325. Not normalised: a constant 1 has area 0.5.
    assert area_under_curve(QUARTERS, EXPECTED_CURVE, max_fraction=0.5) == pytest.approx(0.325)
    assert area_under_curve(QUARTERS, np.ones(5), max_fraction=0.5) == pytest.approx(0.5)


def test_area_under_curve_interpolates_between_grid_points():
    # At 0.6 the curve is 0.7 + (0.6 - 0.5) / 0.25 * (0.725 - 0.7) = 0.71;
    # area = 0.325 + 0.1 * (0.7 + 0.71) / 2 = 0.3955
    assert area_under_curve(QUARTERS, EXPECTED_CURVE, max_fraction=0.6) == pytest.approx(0.3955)
    # Below the first step: 0.1 * (0.5 + 0.58) / 2 = 0.054 (0.58 = 0.5 + 0.4 * 0.2)
    assert area_under_curve(QUARTERS, EXPECTED_CURVE, max_fraction=0.1) == pytest.approx(0.054)


@pytest.mark.parametrize(
    ("fractions", "values", "max_fraction", "message"),
    [
        ([0.0, 0.5], [1.0, 1.0], 1.0, "cover"),
        ([0.1, 1.0], [1.0, 1.0], 1.0, "cover"),
        ([0.0, 1.0], [1.0], 1.0, "equal length"),
        ([0.0, 1.0], [1.0, np.nan], 1.0, "NaN"),
        ([0.0, 1.0, 0.5], [1.0, 1.0, 1.0], 1.0, "increasing"),
        ([0.0], [1.0], 1.0, "two points"),
        ([0.0, 1.0], [1.0, 1.0], 0.0, "max_fraction"),
        ([0.0, 1.0], [1.0, 1.0], float("nan"), "max_fraction"),
    ],
)
def test_area_under_curve_rejects_invalid_input(fractions, values, max_fraction, message):
    with pytest.raises(InvalidInputError, match=message):
        area_under_curve(fractions, values, max_fraction=max_fraction)


# --- relative area -------------------------------------------------------------------------------------


def reference_curves(base, corrected, fractions):
    return no_correction_curve(base, fractions=fractions), oracle_curve(base, corrected, fractions=fractions)


def test_relative_auc_hand_computed():
    none, oracle = reference_curves(BASE, CORRECTED, QUARTERS)
    curve = correction_curve(BASE, CORRECTED, UNCERTAINTY, fractions=QUARTERS)
    # (0.6875 - 0.5) / (0.7 - 0.5) = 93.75 %
    assert relative_auc(curve, none, oracle) == pytest.approx(93.75)


def test_relative_auc_up_to_half():
    none, oracle = reference_curves(BASE, CORRECTED, QUARTERS)
    curve = correction_curve(BASE, CORRECTED, UNCERTAINTY, fractions=QUARTERS)
    # Over [0, 0.5]: curve 0.325, oracle 0.25 * (0.6 + 0.7125) = 0.328125, none 0.25.
    # (0.325 - 0.25) / (0.328125 - 0.25) = 0.075 / 0.078125 = 96 %
    assert relative_auc(curve, none, oracle, max_fraction=0.5) == pytest.approx(96.0)


def test_relative_auc_perfect_ranking_is_100_and_none_is_0():
    rng = np.random.default_rng(3)
    base = rng.random(200)
    corrected = np.ones(200)  # segmentation uncertainty: a corrected object is perfect
    none, oracle = reference_curves(base, corrected, None)
    true_error = 1.0 - base  # the ideal uncertainty for this scenario
    assert relative_auc(correction_curve(base, corrected, true_error), none, oracle) == pytest.approx(100.0)
    assert relative_auc(oracle, none, oracle) == pytest.approx(100.0)
    assert relative_auc(none, none, oracle) == pytest.approx(0.0)


def test_relative_auc_orders_reversed_random_and_informative_rankings():
    none, oracle = reference_curves(BASE, CORRECTED, QUARTERS)
    reversed_curve = correction_curve(BASE, CORRECTED, -(CORRECTED - BASE), fractions=QUARTERS)
    np.testing.assert_allclose(reversed_curve.mean_iou, EXPECTED_REVERSED)
    random = random_curve(BASE, CORRECTED, num_seeds=2000, fractions=QUARTERS)
    informative = correction_curve(BASE, CORRECTED, UNCERTAINTY, fractions=QUARTERS)
    # Hand-computed: reversed (0.55 - 0.5) / 0.2 = 25 %, random ~ (0.625 - 0.5) / 0.2 = 62.5 %, 93.75 %.
    assert relative_auc(reversed_curve, none, oracle) == pytest.approx(25.0)
    assert relative_auc(random, none, oracle) == pytest.approx(62.5, abs=2.5)
    assert (
        relative_auc(reversed_curve, none, oracle)
        < relative_auc(random, none, oracle)
        < relative_auc(informative, none, oracle)
    )
    assert area_under_curve(*reversed_curve) == pytest.approx(AUC_REVERSED)
    assert area_under_curve(*random) == pytest.approx(AUC_RANDOM, abs=0.005)
    assert area_under_curve(*none) == pytest.approx(AUC_NONE)


def test_relative_auc_is_nan_when_no_gain_is_possible():
    none, oracle = reference_curves(BASE, BASE, QUARTERS)
    curve = correction_curve(BASE, BASE, UNCERTAINTY, fractions=QUARTERS)
    assert math.isnan(relative_auc(curve, none, oracle))


def test_relative_auc_is_nan_when_correction_only_hurts():
    worse = BASE - 0.1
    none, oracle = reference_curves(BASE, worse, QUARTERS)
    curve = correction_curve(BASE, worse, UNCERTAINTY, fractions=QUARTERS)
    assert math.isnan(relative_auc(curve, none, oracle))


# --- Pearson correlation -------------------------------------------------------------------------------


def test_pearson_matrix_hand_computed():
    # x centred (-1, 0, 1), y centred (-1, 1, 0): dot 1, norms sqrt(2) each -> 0.5.
    # z = reversed x -> -1 with x; with y: dot (1, 0, -1).(-1, 1, 0) = -1 -> -0.5.
    names, matrix = pearson_matrix({"x": [1, 2, 3], "y": [1, 3, 2], "z": [3, 2, 1]})
    assert names == ["x", "y", "z"]
    np.testing.assert_allclose(matrix, [[1.0, 0.5, -1.0], [0.5, 1.0, -0.5], [-1.0, -0.5, 1.0]])


def test_pearson_matrix_matches_numpy_on_random_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    columns = {"a": x, "b": 0.5 * x + rng.normal(size=500), "c": rng.random(500), "d": -(x**2)}
    names, matrix = pearson_matrix(columns)
    assert names == list(columns)
    np.testing.assert_allclose(matrix, np.corrcoef(np.stack(list(columns.values()))), atol=1e-12)
    np.testing.assert_array_equal(matrix, matrix.T)


def test_pearson_matrix_constant_column_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names, matrix = pearson_matrix({"x": [1.0, 2.0, 4.0], "constant": [0.1, 0.1, 0.1], "y": [2.0, 4.0, 8.0]})
    assert names == ["x", "constant", "y"]
    assert np.isnan(matrix[1]).all()
    assert np.isnan(matrix[:, 1]).all()
    np.testing.assert_allclose(matrix[np.ix_([0, 2], [0, 2])], np.ones((2, 2)))


def test_pearson_matrix_degenerate_inputs():
    names, matrix = pearson_matrix({})
    assert names == []
    assert matrix.shape == (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, single = pearson_matrix({"a": [1.0], "b": [2.0]})
    assert np.isnan(single).all()


def test_pearson_matrix_rejects_invalid_columns():
    with pytest.raises(InvalidInputError, match="same length"):
        pearson_matrix({"a": [1, 2, 3], "b": [1, 2]})
    with pytest.raises(InvalidInputError, match="NaN"):
        pearson_matrix({"a": [1, 2, np.nan], "b": [1, 2, 3]})


# --- scenarios -----------------------------------------------------------------------------------------


def test_correction_scenarios_describe_the_paper():
    scenarios = {scenario.name: scenario for scenario in CORRECTION_SCENARIOS}
    assert list(scenarios) == [
        "model_selection",
        "prompt_refinement",
        "task_supervision",
        "segmentation_uncertainty",
    ]
    assert scenarios["model_selection"] == CorrectionScenario(
        name="model_selection",
        base_column="iou",
        corrected="iou",
        base_model="tiny",
        corrected_model="large",
        description=scenarios["model_selection"].description,
    )
    assert (scenarios["prompt_refinement"].base_column, scenarios["prompt_refinement"].corrected) == (
        "iou",
        "iou_dense_prompt",
    )
    assert (scenarios["task_supervision"].base_column, scenarios["task_supervision"].corrected) == (
        "unsupervised_iou",
        "iou",
    )
    assert scenarios["segmentation_uncertainty"].corrected == 1.0
    assert all(scenario.description for scenario in CORRECTION_SCENARIOS)


def test_pearson_is_the_entry_of_the_matrix_and_nan_when_undefined():
    from usam.metrics import pearson

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(50), rng.standard_normal(50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson(x, y) == pearson_matrix({"x": x, "y": y})[1][0, 1]
    assert pearson(x, 3.0 * x + 1.0) == pytest.approx(1.0)
    assert math.isnan(pearson(x, np.full(50, 0.1)))
    with pytest.raises(InvalidInputError):
        pearson(x, y[:10])


def _reference_area(fractions, values, max_fraction):
    """The trapezoidal area written out directly: points below max_fraction plus the interpolated end point."""
    inside = fractions < max_fraction
    x = np.append(fractions[inside], max_fraction)
    y = np.append(values[inside], np.interp(max_fraction, fractions, values))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def test_area_weights_give_the_trapezoidal_area_on_any_grid_and_end():
    from usam.metrics import area_weights

    rng = np.random.default_rng(3)
    for _ in range(300):
        grid = np.unique(np.concatenate([[0.0], rng.random(rng.integers(1, 30))]))
        # Ends between grid points, on an inner grid point, and on the last one.
        for end in (rng.uniform(1e-6, grid[-1]), grid[rng.integers(1, grid.size)], grid[-1]):
            values = rng.random(grid.size)
            expected = _reference_area(grid, values, end)
            assert float(area_weights(grid, max_fraction=end) @ values) == pytest.approx(expected, abs=1e-12)
            assert area_under_curve(grid, values, max_fraction=end) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(InvalidInputError, match="cover"):
        area_weights(np.array([0.0, 0.4]), max_fraction=0.5)


def test_correction_curve_numbers_ties_like_np_unique():
    """The one-sort tie grouping gives the curve of the tie-expectation rule computed with np.unique."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        size = int(rng.integers(1, 60))
        base, corrected = rng.random(size), rng.random(size)
        # Few distinct values, so that ties are common; infinities allowed.
        values = rng.choice(np.array([-np.inf, 0.1, 0.2, 0.2, 0.7, np.inf]), size=size)
        for higher in (True, False):
            gain = corrected - base
            _, tie_index = np.unique(values, return_inverse=True)
            tie_gain = np.bincount(tie_index, weights=gain) / np.bincount(tie_index)
            order = np.argsort(values, kind="stable")
            order = order[::-1] if higher else order
            cumulative = np.concatenate([[0.0], np.cumsum(tie_gain[tie_index[order]])])
            expected = (base.sum() + cumulative[corrected_counts(QUARTERS, size)]) / size
            curve = correction_curve(base, corrected, values, fractions=QUARTERS, higher_is_uncertain=higher)
            np.testing.assert_allclose(curve.mean_iou, expected, rtol=0, atol=1e-12)
