"""Tests for usam.calibration: monotone maps and their choice, split-conformal lower bounds, Mondrian bins, ECE."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from usam.calibration import (
    ALPHA_GRID,
    BoundKind,
    HeadCalibration,
    HeadsCalibration,
    IsotonicMap,
    MapKind,
    MonotoneMap,
    alpha_index,
    conformal_lower_quantile,
    conformal_rank,
    cross_validated_errors,
    ece_change_samples,
    empirical_coverage,
    expected_calibration_error,
    image_folds,
    mondrian_edges,
    pool_adjacent_violators,
    reliability_curve,
    select_map,
)
from usam.errors import HeadsFileError, InvalidInputError


def miscalibrated(rng, n):
    """A head that is overconfident: the true IoU is the prediction squared, plus noise."""
    predictions = rng.uniform(0.0, 1.0, n)
    targets = np.clip(predictions**2 + rng.normal(0.0, 0.08, n), 0.0, 1.0)
    return predictions, targets


def test_pool_adjacent_violators_is_the_least_squares_monotone_fit():
    rng = np.random.default_rng(0)
    values = rng.normal(size=40).cumsum() + rng.normal(0, 3, 40)
    weights = rng.uniform(0.5, 2.0, 40)
    fitted = pool_adjacent_violators(values, weights)
    assert (np.diff(fitted) >= -1e-12).all()
    # No monotone perturbation of the fit lowers the weighted squared error (a necessary optimality condition).
    best = np.sum(weights * (fitted - values) ** 2)
    for _ in range(200):
        candidate = np.sort(fitted + rng.normal(0, 0.05, 40))
        assert np.sum(weights * (candidate - values) ** 2) >= best - 1e-9
    # Each pooled block takes the weighted mean of its values.
    for level in np.unique(fitted):
        block = fitted == level
        assert np.average(values[block], weights=weights[block]) == pytest.approx(level)


def test_isotonic_map_is_monotone_clipped_and_piecewise_linear():
    rng = np.random.default_rng(1)
    predictions, targets = miscalibrated(rng, 3000)
    mapping = IsotonicMap.fit(predictions, targets)
    grid = np.linspace(-0.5, 1.5, 5001)
    values = mapping(grid)
    assert (np.diff(values) >= 0).all()
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    # Constant beyond the knots, and exactly the knots' values at the knots.
    assert values[0] == mapping.knots_y[0]
    assert values[-1] == mapping.knots_y[-1]
    np.testing.assert_array_equal(mapping(mapping.knots_x), np.clip(mapping.knots_y, 0, 1))
    # It learned the square: the calibrated value of 0.5 is near 0.25, far from the raw 0.5.
    assert mapping(0.5) == pytest.approx(0.25, abs=0.05)
    # Ties in the predictions are pooled: equal inputs, one output.
    tied = IsotonicMap.fit([0.3, 0.3, 0.3, 0.6], [0.0, 1.0, 0.5, 0.9])
    np.testing.assert_allclose(tied([0.3, 0.6]), [0.5, 0.9])


def test_affine_map_is_the_least_squares_line_clipped_with_knots_where_it_leaves_the_unit_interval():
    rng = np.random.default_rng(11)
    predictions = rng.uniform(0.0, 1.0, 2000)
    targets = 1.5 * predictions - 0.2 + rng.normal(0.0, 0.01, 2000)
    mapping = MonotoneMap.fit(predictions, targets, "affine")
    slope, intercept = np.polyfit(predictions, targets, 1)
    inside = np.linspace(0.2, 0.75, 50)
    np.testing.assert_allclose(mapping(inside), slope * inside + intercept, atol=1e-12)
    # Below 0 and above 1 the clipped line is exact too: knots sit where it crosses 0 and 1.
    np.testing.assert_allclose(mapping([-intercept / slope, (1 - intercept) / slope]), [0.0, 1.0], atol=1e-12)
    assert mapping(0.05) == 0.0
    assert mapping(0.95) == 1.0
    assert (np.diff(mapping(np.linspace(-1, 2, 1001))) >= 0).all()
    # A head that ranks backwards gets no decreasing map: the slope stops at 0, the map is the mean.
    backwards = MonotoneMap.fit(predictions, 1.0 - predictions, "affine")
    np.testing.assert_allclose(backwards([0.0, 0.5, 1.0]), np.mean(1.0 - predictions))
    identity = MonotoneMap.fit(predictions, targets, "identity")
    np.testing.assert_array_equal(identity([-0.5, 0.0, 0.3, 1.0, 1.5]), [0.0, 0.0, 0.3, 1.0, 1.0])
    with pytest.raises(InvalidInputError, match="select_map"):
        MonotoneMap.fit(predictions, targets, "auto")
    assert IsotonicMap is MonotoneMap  # the former name still works; its fit is still isotonic by default


def test_image_folds_keep_each_images_rows_together_and_spread_images_evenly():
    groups = np.repeat(np.arange(23), np.arange(23) % 4 + 1)
    fold = image_folds(groups, 5, seed=3)
    for image in range(23):
        assert np.unique(fold[groups == image]).size == 1
    images_per_fold = np.bincount([fold[groups == image][0] for image in range(23)], minlength=5)
    assert images_per_fold.max() - images_per_fold.min() <= 1
    assert not np.array_equal(fold, image_folds(groups, 5, seed=4))


def test_cross_validation_chooses_no_correction_for_a_calibrated_head_and_the_shape_that_is_there():
    def choices(truth, repeats=40, rows=600):
        counts = {str(kind): 0 for kind in (MapKind.IDENTITY, MapKind.AFFINE, MapKind.ISOTONIC)}
        for seed in range(repeats):
            rng = np.random.default_rng(seed)
            predictions = rng.uniform(0.25, 0.75, rows)
            images = np.repeat(np.arange(rows // 3), 3)
            counts[str(select_map(predictions, truth(predictions, rng), images, seed=seed)[1])] += 1
        return counts

    # Calibrated but noisy: a fitted map mostly predicts unseen images worse than the head itself.
    calibrated = choices(lambda p, rng: p + rng.normal(0.0, 0.08, p.size))
    assert calibrated["identity"] >= 20
    assert calibrated["isotonic"] <= 4
    # Over-confident by a shift and a stretch: the line.
    assert choices(lambda p, rng: 0.6 * p + 0.2 + rng.normal(0.0, 0.08, p.size))["affine"] >= 35
    # A curve: isotonic regression.
    assert choices(lambda p, rng: 4 * (p - 0.25) ** 2 + rng.normal(0.0, 0.03, p.size))["isotonic"] == 40


def test_cross_validated_errors_are_the_out_of_fold_squared_errors():
    rng = np.random.default_rng(12)
    predictions, targets = miscalibrated(rng, 90)
    images = np.repeat(np.arange(30), 3)
    errors = cross_validated_errors(predictions, targets, images, folds=3, seed=1)
    fold = image_folds(images, 3, seed=1)
    for kind in ("identity", "affine", "isotonic"):
        squared = 0.0
        for index in range(3):
            mapping = MonotoneMap.fit(predictions[fold != index], targets[fold != index], kind)
            squared += np.sum((mapping(predictions[fold == index]) - targets[fold == index]) ** 2)
        assert errors[kind] == pytest.approx(squared / 90)
    with pytest.raises(InvalidInputError, match="two images"):
        cross_validated_errors(predictions, targets, np.zeros(90))
    with pytest.raises(InvalidInputError, match="one per row"):
        cross_validated_errors(predictions, targets, images[:10])


def test_head_calibration_records_the_chosen_kinds_and_reads_old_files_as_isotonic():
    rng = np.random.default_rng(13)
    fit, conformal = miscalibrated(rng, 400), miscalibrated(rng, 400)
    images = np.arange(800) // 4
    head = HeadCalibration.fit(*fit, *conformal, fit_groups=images[:400], conformal_groups=images[400:])
    assert head.map_kind is MapKind.ISOTONIC  # the square is a curve
    assert set(head.map_errors) == {"identity", "affine", "isotonic"}
    assert min(head.map_errors, key=head.map_errors.get) == "isotonic"
    data = json.loads(json.dumps(head.to_json()))
    again = HeadCalibration.from_json(data, head.alphas)
    assert (again.map_kind, again.bound_map_kind, again.map_errors) == (head.map_kind, head.bound_map_kind,
                                                                        head.map_errors)  # fmt: skip
    for key in ("map_kind", "bound_map_kind", "map_errors"):
        del data[key]
    old = HeadCalibration.from_json(data, head.alphas)
    assert old.map_kind is MapKind.ISOTONIC
    assert old.map_errors is None
    fixed = HeadCalibration.fit(*fit, *conformal, map_kind="affine")
    assert (fixed.map_kind, fixed.bound_map_kind, fixed.map_errors) == (MapKind.AFFINE, MapKind.AFFINE, None)
    with pytest.raises(InvalidInputError, match="both parts"):
        HeadCalibration.fit(*fit, *conformal, fit_groups=images[:400])


def test_calibration_lowers_the_ece_of_a_miscalibrated_head_on_held_out_rows():
    rng = np.random.default_rng(2)
    fit = miscalibrated(rng, 4000)
    conformal = miscalibrated(rng, 4000)
    held_out_predictions, held_out_targets = miscalibrated(rng, 4000)
    head = HeadCalibration.fit(*fit, *conformal)
    before = expected_calibration_error(held_out_predictions, held_out_targets)
    after = expected_calibration_error(head.calibrate(held_out_predictions), held_out_targets)
    assert before > 0.1  # E[p - p^2] = 1/6 for uniform p
    assert after < 0.02
    assert after < before / 5


def test_ece_and_reliability_curve_use_equal_mass_bins():
    predictions = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 1.0])
    targets = np.array([0.0, 0.0, 0.6, 0.6, 1.0, 1.0])
    mean_predicted, mean_true, counts = reliability_curve(predictions, targets, bins=3)
    np.testing.assert_allclose(mean_predicted, [0.15, 0.35, 0.95])
    np.testing.assert_allclose(mean_true, [0.0, 0.6, 1.0])
    np.testing.assert_array_equal(counts, [2, 2, 2])
    assert expected_calibration_error(predictions, targets, bins=3) == pytest.approx((0.15 + 0.25 + 0.05) / 3)
    assert expected_calibration_error(targets, targets) == 0.0
    assert math.isnan(expected_calibration_error([], []))


def test_ece_change_samples_are_paired_ece_differences_on_image_resamples():
    rng = np.random.default_rng(5)
    images = np.repeat(np.arange(60), rng.integers(1, 5, 60))
    raw = rng.uniform(size=images.size)
    truth = np.clip(raw + rng.normal(0.0, 0.1, images.size), 0.0, 1.0)
    shifted = np.clip(raw + 0.15, 0.0, 1.0)
    ties = np.round(raw, 1)  # an isotonic map's flat steps: many equal predictions
    samples = ece_change_samples(shifted, ties, truth, images, resamples=50, seed=3, bins=7)

    # Each sample is the difference of the two ECEs of the same resample, the rows of every drawn image repeated
    # as often as it was drawn (the resamples of metrics.bootstrap_statistics over the images).
    draws = np.random.default_rng(3)
    for value in samples[:10]:
        drawn = np.bincount(draws.integers(0, 60, 60), minlength=60)
        by_order = {}
        for name, values in (("shifted", shifted), ("ties", ties)):
            # The resample's rows in the full sample's stable order of the prediction.
            order = np.argsort(values, kind="stable")
            repeated = np.repeat(order, drawn[images[order]])
            by_order[name] = expected_calibration_error(values[repeated], truth[repeated], bins=7)
        assert value == pytest.approx(by_order["ties"] - by_order["shifted"], abs=1e-12)

    # The same seed and groups pair the samples; the change of a real correction is below 0 on every resample,
    # a change of nothing is 0.
    assert np.array_equal(samples, ece_change_samples(shifted, ties, truth, images, resamples=50, seed=3, bins=7))
    assert np.all(ece_change_samples(shifted, raw, truth, images, resamples=200) < 0)
    assert np.all(ece_change_samples(raw, raw, truth, images, resamples=20) == 0)
    with pytest.raises(InvalidInputError, match="one entry per row"):
        ece_change_samples(raw, raw, truth, images[:-1])


def test_conformal_quantile_is_the_floor_n_plus_1_alpha_th_smallest_residual():
    residuals = np.arange(1.0, 100.0)  # 99 residuals 1..99, shuffled
    np.random.default_rng(3).shuffle(residuals)
    assert conformal_rank(99, 0.1) == 10
    assert conformal_lower_quantile(residuals, 0.1) == 10.0
    assert conformal_lower_quantile(residuals, 0.05) == 5.0
    # Too few residuals for this α: no finite quantile.
    assert conformal_lower_quantile(residuals[:8], 0.1) == -math.inf
    assert conformal_rank(19, 0.05) == 1  # (n + 1) α = 1 exactly, despite rounding in 20 * 0.05


@pytest.mark.parametrize(("num_rows", "alpha"), [(19, 0.1), (99, 0.1), (199, 0.05), (57, 0.2)])
def test_conformal_bound_covers_uniform_residuals_as_promised(num_rows, alpha):
    """Residuals U(0, 1): given a calibration set, the bound's coverage is exactly 1 - q (q its quantile).

    Averaged over many calibration sets it must lie in [1 - α, 1 - α + 1 / (n + 1)]; its expectation is
    1 - k / (n + 1). 4000 draws make the mean's standard error below 0.0011; the tolerance is 5 of those.
    """
    rng = np.random.default_rng(4)
    draws = 4000
    quantiles = np.array([conformal_lower_quantile(rng.uniform(size=num_rows), alpha) for _ in range(draws)])
    coverage = 1.0 - quantiles  # P(U >= q) for a fresh residual U
    expected = 1.0 - conformal_rank(num_rows, alpha) / (num_rows + 1)
    assert 1.0 - alpha <= expected <= 1.0 - alpha + 1.0 / (num_rows + 1)
    assert coverage.mean() == pytest.approx(expected, abs=0.0055)
    # And with fresh residuals drawn for real, one per calibration set.
    hits = rng.uniform(size=draws) >= quantiles
    assert hits.mean() >= 1.0 - alpha - 4 * math.sqrt(alpha * (1 - alpha) / draws)


def test_head_bounds_hold_on_held_out_rows_marginally_and_per_bin():
    rng = np.random.default_rng(5)
    head = HeadCalibration.fit(*miscalibrated(rng, 5000), *miscalibrated(rng, 5000), min_bin_rows=400)
    assert len(head.bins) > 1
    predictions, targets = miscalibrated(rng, 40000)
    # The Mondrian bins are bins of the bound's own map.
    bound_calibrated = head.bound_mapping(predictions)
    for alpha in (0.05, 0.1, 0.2):
        for bound in BoundKind:
            lower = head.lower_bound(predictions, alpha, bound)
            assert lower.min() >= 0.0
            assert lower.max() <= 1.0
            # 5000 residuals: the coverage of one calibration set varies by about 0.004 (alpha = 0.1).
            assert empirical_coverage(lower, targets) == pytest.approx(1 - alpha, abs=0.02), (alpha, bound)
        # Per bin the Mondrian bound covers each bin, not just all rows together.
        bins = np.searchsorted(head.bin_edges, bound_calibrated, side="right")
        lower = head.lower_bound(predictions, alpha, BoundKind.MONDRIAN)
        for index, group in enumerate(head.bins):
            in_bin = bins == index
            # A bin's coverage varies with its few calibration residuals: allow 4 standard deviations.
            slack = 4 * math.sqrt(alpha * (1 - alpha) / group.rows)
            assert empirical_coverage(lower[in_bin], targets[in_bin]) >= 1 - alpha - slack, (alpha, index)
    # A smaller α gives a lower (or equal) bound.
    assert (head.lower_bound(predictions, 0.05) <= head.lower_bound(predictions, 0.2)).all()


def test_the_calibration_map_uses_every_row_and_the_bound_map_only_the_fit_part():
    rng = np.random.default_rng(7)
    fit, conformal = miscalibrated(rng, 500), miscalibrated(rng, 300)
    head = HeadCalibration.fit(*fit, *conformal, min_bin_rows=50)
    both = IsotonicMap.fit(np.concatenate([fit[0], conformal[0]]), np.concatenate([fit[1], conformal[1]]))
    grid = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(head.calibrate(grid), both(grid))
    np.testing.assert_array_equal(head.bound_mapping(grid), IsotonicMap.fit(*fit)(grid))
    # The bound is the bound map plus the conformal quantile of true - bound map on the conformal rows only.
    residuals = conformal[1] - IsotonicMap.fit(*fit)(conformal[0])
    expected = np.clip(head.bound_mapping(grid) + conformal_lower_quantile(residuals, 0.1), 0, 1)
    np.testing.assert_array_equal(head.lower_bound(grid, 0.1, "marginal"), expected)
    assert head.fit_rows == 500


def test_a_format_1_calibration_reads_with_one_map_for_both():
    rng = np.random.default_rng(8)
    head = HeadCalibration.fit(*miscalibrated(rng, 300), *miscalibrated(rng, 300), min_bin_rows=50)
    data = head.to_json()
    assert "bound_map" in data
    old = {key: value for key, value in data.items() if key != "bound_map"}
    loaded = HeadCalibration.from_json(old, head.alphas)
    assert loaded.bound_mapping is None
    grid = np.linspace(0, 1, 11)
    np.testing.assert_array_equal(
        loaded.lower_bound(grid, 0.1, "marginal"), np.clip(head.calibrate(grid) + head.marginal.quantiles[
            head.alphas.index(0.1)], 0, 1)
    )  # fmt: skip


def test_mondrian_edges_keep_the_minimum_count_even_with_ties():
    values = np.concatenate([np.full(700, 0.2), np.linspace(0.3, 1.0, 300), np.full(50, 1.0)])
    edges = mondrian_edges(values, min_bin_rows=100, max_bins=10)
    counts = np.bincount(np.searchsorted(edges, values, side="right"))
    assert counts.size == edges.size + 1
    assert counts.min() >= 100
    assert mondrian_edges(values[:150], min_bin_rows=100, max_bins=10).size == 0


def test_alpha_between_grid_values_uses_the_smaller_one_and_bad_alphas_are_refused():
    assert ALPHA_GRID[alpha_index(0.1)] == 0.1
    assert ALPHA_GRID[alpha_index(0.105)] == 0.1
    assert ALPHA_GRID[alpha_index(0.9)] == max(ALPHA_GRID)
    for bad in (0.0, 1.0, -0.1, float("nan"), 0.0005):
        with pytest.raises(InvalidInputError, match="alpha"):
            alpha_index(bad)


def test_too_few_rows_are_refused():
    with pytest.raises(InvalidInputError, match="at least"):
        HeadCalibration.fit(np.linspace(0, 1, 10), np.linspace(0, 1, 10), np.linspace(0, 1, 50), np.zeros(50))


def test_json_round_trip_gives_the_same_outputs_and_is_strict():
    rng = np.random.default_rng(6)
    head = HeadCalibration.fit(*miscalibrated(rng, 300), *miscalibrated(rng, 60), min_bin_rows=20)
    calibration = HeadsCalibration({"iou_tiny": head}, source={"store": "x"})
    text = json.dumps(calibration.to_json(), allow_nan=False)  # -inf quantiles are null
    assert "null" in text  # 60 residuals: no finite quantile at alpha = 0.001
    loaded = HeadsCalibration.from_json(json.loads(text))
    values = {"iou_tiny": rng.uniform(size=(4, 3)), "model_gap": np.zeros((4, 3))}
    for bound in BoundKind:
        original = calibration.apply(values, 0.1, bound)
        again = loaded.apply(values, 0.1, bound)
        for part, other in zip(original, again, strict=True):
            assert set(part) == {"iou_tiny"}
            np.testing.assert_array_equal(part["iou_tiny"], other["iou_tiny"])
            assert part["iou_tiny"].shape == (4, 3)
    with pytest.raises(HeadsFileError, match="malformed"):
        HeadsCalibration.from_json({"alphas": [0.1], "heads": {"iou_tiny": {"map": {}}}})
    broken = json.loads(text)
    broken["heads"]["iou_tiny"]["map"]["y"] = broken["heads"]["iou_tiny"]["map"]["y"][::-1]
    with pytest.raises(HeadsFileError, match="non-decreasing"):
        HeadsCalibration.from_json(broken)
