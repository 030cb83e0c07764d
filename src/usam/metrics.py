"""Evaluation measures of the UncertainSAM paper, as plain functions on numpy arrays.

The paper judges an uncertainty estimate by how much it helps to *correct* the objects it flags. For N
objects with an IoU before correction (``base_iou``) and after (``corrected_iou``), a correction curve
gives, for each fraction r of objects corrected, the mean IoU over all N objects when the round(r·N)
most uncertain objects are corrected. A good estimate makes the curve rise early. The curve is compared
with two references: no correction (constant mean base IoU) and the oracle, which corrects objects in
order of their true gain. :func:`relative_auc` puts the area under a curve on the scale from no
correction (0 %) to the oracle (100 %).

:data:`CORRECTION_SCENARIOS` names the four kinds of correction the paper evaluates; an evaluation
module builds the base and corrected arrays from its results table with them. :func:`pearson` and
:func:`pearson_matrix` are the one Pearson correlation of usam (the evaluation's table, the trainer's metrics).
:func:`bootstrap_statistics` and :func:`percentile_interval` are the one bootstrap of usam (the test-bed's
confidence intervals over objects).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from usam.errors import InvalidInputError
from usam.validation import check_int

#: Default number of evenly spaced fractions, 0 to 1, at which curves are evaluated (steps of 1 %).
DEFAULT_NUM_POINTS = 101

#: Default number of random orders averaged by :func:`random_curve`.
DEFAULT_NUM_SEEDS = 10

# r·N is rounded to this many decimals before rounding to a count, so that binary floating-point error
# cannot push an exact half (e.g. 0.285 · 100, computed as 28.4999…) to the wrong side.
_COUNT_DECIMALS = 9

# An oracle whose area exceeds the no-correction area by no more than this is treated as no gain at all.
_NO_GAIN_TOLERANCE = 1e-12


class Curve(NamedTuple):
    """A correction curve; unpacks as ``fractions, mean_iou``.

    Attributes:
        fractions: Array of shape (P,): fractions r of objects corrected, increasing, within [0, 1].
        mean_iou: Array of shape (P,): mean IoU over all objects after correcting that fraction.
    """

    fractions: np.ndarray
    mean_iou: np.ndarray


@dataclass(frozen=True)
class CorrectionScenario:
    """One kind of correction the paper evaluates, described by the results-table columns it uses.

    Attributes:
        name: Identifier of the scenario.
        base_column: Column holding an object's IoU before correction.
        corrected: Column holding the IoU after correction, or a constant IoU that every corrected object
            gets (1.0 for a perfect manual correction).
        base_model: Model whose row gives the base IoU (and the uncertainty), or None for the model being
            evaluated.
        corrected_model: Model whose row, for the same object and prompt, gives the corrected IoU, or None
            for the same row as the base IoU.
        description: What correcting an object means in this scenario.
    """

    name: str
    base_column: str
    corrected: str | float
    base_model: str | None = None
    corrected_model: str | None = None
    description: str = ""


#: The paper's four correction scenarios.
CORRECTION_SCENARIOS: tuple[CorrectionScenario, ...] = (
    CorrectionScenario(
        name="model_selection",
        base_column="iou",
        corrected="iou",
        base_model="tiny",
        corrected_model="large",
        description="Run the largest SAM2 model instead of the smallest on the most uncertain objects.",
    ),
    CorrectionScenario(
        name="prompt_refinement",
        base_column="iou",
        corrected="iou_dense_prompt",
        description="Prompt the most uncertain objects with the dense prompt instead of the center click.",
    ),
    CorrectionScenario(
        name="task_supervision",
        base_column="unsupervised_iou",
        corrected="iou",
        description=(
            "Let a user pick which of SAM2's multimask outputs is meant for the most uncertain objects, "
            "instead of taking the output SAM2 scores highest."
        ),
    ),
    CorrectionScenario(
        name="segmentation_uncertainty",
        base_column="iou",
        corrected=1.0,
        description="Have the most uncertain objects segmented perfectly, e.g. by a human annotator.",
    ),
)


def _as_vector(values: np.ndarray, name: str, *, allow_infinite: bool = False) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array without NaN (or infinity unless allowed), or raise."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be numbers, got {values!r}") from None
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-D array, got shape {array.shape}")
    if np.isnan(array).any():
        raise InvalidInputError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(array))[0])}")
    if not allow_infinite and np.isinf(array).any():
        raise InvalidInputError(f"{name} contains infinity at index {int(np.flatnonzero(np.isinf(array))[0])}")
    return array


def _check_objects(base_iou: np.ndarray, corrected_iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate the per-object IoU arrays: finite, 1-D, same non-zero length."""
    base = _as_vector(base_iou, "base_iou")
    corrected = _as_vector(corrected_iou, "corrected_iou")
    if base.shape != corrected.shape:
        raise InvalidInputError(
            f"base_iou and corrected_iou must have one value per object, got {base.size} and {corrected.size}"
        )
    if base.size == 0:
        raise InvalidInputError("a correction curve needs at least one object, got none")
    return base, corrected


def _fraction_grid(fractions: np.ndarray | None, num_points: int) -> np.ndarray:
    """Return the fractions to evaluate at: given ones (validated) or ``num_points`` from 0 to 1."""
    if fractions is None:
        if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 2:
            raise InvalidInputError(f"num_points must be an integer of at least 2, got {num_points!r}")
        return np.linspace(0.0, 1.0, int(num_points))
    grid = _as_vector(fractions, "fractions")
    if grid.size == 0:
        raise InvalidInputError("fractions must not be empty")
    if grid.min() < 0.0 or grid.max() > 1.0:
        raise InvalidInputError(f"fractions must lie in [0, 1], got values from {grid.min()} to {grid.max()}")
    if np.any(np.diff(grid) <= 0):
        raise InvalidInputError("fractions must be strictly increasing")
    return grid


def corrected_counts(fractions: np.ndarray, num_objects: int) -> np.ndarray:
    """Return how many objects are corrected at each fraction: ``floor(r·N + 1/2)``.

    That is r·N rounded to the nearest integer with halves rounded up (not to even), so that for N = 2,
    r = 0.25 corrects one object. r·N is first rounded to 9 decimals, so that a half that binary
    floating point misses by a hair (0.285 · 100 gives 28.4999…) still rounds up.

    Args:
        fractions: Fractions r in [0, 1].
        num_objects: Number of objects N.

    Returns:
        Integer array, same shape as ``fractions``, with values in [0, N].

    Example:
        >>> corrected_counts(np.array([0.0, 0.25, 0.5, 1.0]), 2).tolist()
        [0, 1, 1, 2]
    """
    scaled = np.round(np.asarray(fractions, dtype=np.float64) * num_objects, _COUNT_DECIMALS)
    return np.clip(np.floor(scaled + 0.5), 0, num_objects).astype(np.int64)


def correction_curve(
    base_iou: np.ndarray,
    corrected_iou: np.ndarray,
    uncertainty: np.ndarray,
    *,
    fractions: np.ndarray | None = None,
    higher_is_uncertain: bool = True,
    num_points: int = DEFAULT_NUM_POINTS,
) -> Curve:
    """Mean IoU when the most uncertain objects are corrected, as a function of the fraction corrected.

    Objects are ranked from most to least uncertain. At fraction r the first k = ``floor(r·N + 1/2)``
    objects of the ranking (see :func:`corrected_counts`) take their corrected IoU, the rest keep their
    base IoU, and the curve value is the mean over all N objects.

    Objects with exactly equal uncertainty are not ranked against each other. The curve takes the
    expected value over all orders within such a tie: if m of the g objects of a tie are corrected,
    each member of the tie gains (m / g) times the tie's mean gain. An estimate that gives every object
    the same value therefore yields the straight line from the uncorrected to the fully corrected mean,
    not a curve that depends on the objects' input order.

    Args:
        base_iou: Array of shape (N,): IoU of each object before correction.
        corrected_iou: Array of shape (N,): IoU of each object after correction.
        uncertainty: Array of shape (N,): the estimate that ranks objects. Infinite values are allowed.
        fractions: Fractions r in [0, 1], strictly increasing, at which to evaluate. Defaults to
            ``num_points`` evenly spaced values from 0 to 1.
        higher_is_uncertain: Whether a higher value means more uncertain. Pass False for a confidence,
            such as SAM2's score or a predicted IoU, so that the lowest values are corrected first.
        num_points: Number of fractions when ``fractions`` is not given.

    Returns:
        The curve as ``(fractions, mean_iou)``.

    Raises:
        InvalidInputError: If there are no objects, the arrays differ in length or are not 1-D, an IoU is
            NaN or infinite, an uncertainty is NaN, or the fractions are invalid.

    Example:
        Two objects; the second is more uncertain, so it is corrected first:

        >>> curve = correction_curve(np.array([0.5, 0.2]), np.array([0.6, 1.0]), np.array([0.1, 0.9]), num_points=3)
        >>> curve.fractions.tolist(), curve.mean_iou.round(3).tolist()
        ([0.0, 0.5, 1.0], [0.35, 0.75, 0.8])
    """
    base, corrected = _check_objects(base_iou, corrected_iou)
    ranking_values = _as_vector(uncertainty, "uncertainty", allow_infinite=True)
    if ranking_values.shape != base.shape:
        raise InvalidInputError(f"uncertainty must have one value per object ({base.size}), got {ranking_values.size}")
    grid = _fraction_grid(fractions, num_points)
    mean_iou = ranked_mean_iou(base, corrected, ranking_values, corrected_counts(grid, base.size), higher_is_uncertain)
    return Curve(fractions=grid, mean_iou=mean_iou)


def ranked_mean_iou(
    base: np.ndarray, corrected: np.ndarray, ranking_values: np.ndarray, counts: np.ndarray, higher_is_uncertain: bool
) -> np.ndarray:
    """The values of :func:`correction_curve` for inputs that are already checked, at given corrected counts.

    No validation: this is the inner step of :func:`correction_curve` for callers that score thousands of
    rankings of the same checked objects (a bootstrap), where checking every call would cost a third of the time.

    Args:
        base: (N,) float64 base IoUs, finite.
        corrected: (N,) float64 corrected IoUs, finite.
        ranking_values: (N,) float64 estimate, no NaN.
        counts: Objects corrected at each point of the curve (:func:`corrected_counts` of its fractions and N).
        higher_is_uncertain: Whether higher values are corrected first.

    Returns:
        The mean IoU at each count, the same numbers as :func:`correction_curve` gives.
    """
    gain = corrected - base
    # Ascending sort puts tied objects next to each other; reversed, the most uncertain come first. The order
    # within a tie does not matter (its members all carry the tie's mean gain), so the sort need not be stable.
    order = np.argsort(ranking_values)
    # Ties are replaced by their expected contribution: every member of a tie carries the tie's mean gain. Ties
    # are numbered in ascending order of their value (as np.unique's inverse would, from the one sort).
    sorted_values = ranking_values[order]
    tie_of_sorted = np.concatenate([[0], np.cumsum(sorted_values[1:] != sorted_values[:-1])])
    tie_index = np.empty_like(tie_of_sorted)
    tie_index[order] = tie_of_sorted
    tie_mean_gain = np.bincount(tie_index, weights=gain) / np.bincount(tie_index)
    if higher_is_uncertain:
        order = order[::-1]
    return _mean_iou_at_counts(base, tie_mean_gain[tie_index[order]], counts)


def _mean_iou_at_counts(base: np.ndarray, ranked_gain: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean IoU over all objects when the first ``counts`` of the ranked gains are taken (the curve's last step)."""
    cumulative_gain = np.concatenate([[0.0], np.cumsum(ranked_gain)])
    return (base.sum() + cumulative_gain[counts]) / base.size


def oracle_curve(
    base_iou: np.ndarray,
    corrected_iou: np.ndarray,
    *,
    fractions: np.ndarray | None = None,
    num_points: int = DEFAULT_NUM_POINTS,
) -> Curve:
    """Correction curve of the oracle, which corrects objects in order of true gain, largest first.

    Args:
        base_iou: Array of shape (N,): IoU of each object before correction.
        corrected_iou: Array of shape (N,): IoU of each object after correction.
        fractions: Fractions at which to evaluate; see :func:`correction_curve`.
        num_points: Number of fractions when ``fractions`` is not given.

    Returns:
        The curve as ``(fractions, mean_iou)``.

    Raises:
        InvalidInputError: As :func:`correction_curve`.

    Example:
        >>> oracle_curve(np.array([0.5, 0.2]), np.array([0.6, 1.0]), num_points=3).mean_iou.round(3).tolist()
        [0.35, 0.75, 0.8]
    """
    base, corrected = _check_objects(base_iou, corrected_iou)
    return correction_curve(base, corrected, corrected - base, fractions=fractions, num_points=num_points)


def random_curve(
    base_iou: np.ndarray,
    corrected_iou: np.ndarray,
    *,
    num_seeds: int = DEFAULT_NUM_SEEDS,
    seed: int = 0,
    fractions: np.ndarray | None = None,
    num_points: int = DEFAULT_NUM_POINTS,
) -> Curve:
    """Correction curve of random ranking, averaged over ``num_seeds`` seeded random orders.

    As the number of orders grows this approaches the straight line from the uncorrected to the fully
    corrected mean IoU, which is its expected value.

    Args:
        base_iou: Array of shape (N,): IoU of each object before correction.
        corrected_iou: Array of shape (N,): IoU of each object after correction.
        num_seeds: Number of random orders to average.
        seed: Seed of the random orders; order i uses the generator seeded with ``[seed, i]``.
        fractions: Fractions at which to evaluate; see :func:`correction_curve`.
        num_points: Number of fractions when ``fractions`` is not given.

    Returns:
        The curve as ``(fractions, mean_iou)``.

    Raises:
        InvalidInputError: As :func:`correction_curve`, or if ``num_seeds`` is not a positive integer.

    Example:
        With one object, every order is the same:

        >>> random_curve(np.array([0.5]), np.array([1.0]), num_seeds=3, num_points=3).mean_iou.tolist()
        [0.5, 1.0, 1.0]
    """
    check_int(num_seeds, "num_seeds", minimum=1)
    base, corrected = _check_objects(base_iou, corrected_iou)
    grid = _fraction_grid(fractions, num_points)
    counts = corrected_counts(grid, base.size)
    gain = corrected - base
    curves = []
    for seed_index in range(int(num_seeds)):
        # A random permutation used as the uncertainty, highest first. Its values are distinct, so there are no
        # ties to average and its ascending order is its inverse permutation: the numbers of correction_curve on
        # that ranking (a test checks they are equal to the last bit), without its sort.
        random_rank = np.random.default_rng([seed, seed_index]).permutation(base.size)
        ascending = np.empty_like(random_rank)
        ascending[random_rank] = np.arange(base.size)
        curves.append(_mean_iou_at_counts(base, gain[ascending[::-1]], counts))
    return Curve(fractions=grid, mean_iou=np.mean(curves, axis=0))


def no_correction_curve(
    base_iou: np.ndarray,
    *,
    fractions: np.ndarray | None = None,
    num_points: int = DEFAULT_NUM_POINTS,
) -> Curve:
    """The curve of correcting nothing: the mean base IoU at every fraction.

    Args:
        base_iou: Array of shape (N,): IoU of each object.
        fractions: Fractions at which to evaluate; see :func:`correction_curve`.
        num_points: Number of fractions when ``fractions`` is not given.

    Returns:
        The curve as ``(fractions, mean_iou)``.

    Raises:
        InvalidInputError: If there are no objects, an IoU is NaN or infinite, or the fractions are invalid.

    Example:
        >>> no_correction_curve(np.array([0.5, 0.2]), num_points=3).mean_iou.round(3).tolist()
        [0.35, 0.35, 0.35]
    """
    base, _ = _check_objects(base_iou, base_iou)
    grid = _fraction_grid(fractions, num_points)
    return Curve(fractions=grid, mean_iou=np.full(grid.shape, base.mean()))


def area_under_curve(fractions: np.ndarray, values: np.ndarray, *, max_fraction: float = 1.0) -> float:
    """Area under a curve over r in [0, max_fraction], by the trapezoidal rule.

    The area is not divided by ``max_fraction``: a constant curve of 1 has area 0.5 up to 0.5. When
    ``max_fraction`` falls between two fractions the curve is linearly interpolated there.

    Args:
        fractions: Array of shape (P,), strictly increasing, starting at 0 and reaching ``max_fraction``.
        values: Array of shape (P,): the curve's values at ``fractions``.
        max_fraction: Upper end of the integration, greater than 0.

    Returns:
        The area.

    Raises:
        InvalidInputError: If the arrays are not 1-D of equal length, contain NaN or infinity, the
            fractions are not strictly increasing or do not cover [0, max_fraction].

    Example:
        >>> area_under_curve(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0]))
        0.75
        >>> area_under_curve(np.array([0.0, 1.0]), np.array([1.0, 1.0]), max_fraction=0.5)
        0.5
    """
    curve_values = _as_vector(values, "values")
    weights = area_weights(fractions, max_fraction=max_fraction)
    if weights.shape != curve_values.shape:
        raise InvalidInputError(
            f"fractions and values must have equal length, got {weights.size} and {curve_values.size}"
        )
    return float(weights @ curve_values)


def area_weights(fractions: np.ndarray, *, max_fraction: float = 1.0) -> np.ndarray:
    """Weights ``w`` with ``area_under_curve(fractions, values, max_fraction=m) == w @ values`` for any values.

    The trapezoidal area is linear in the curve's values, so many curves on one grid (bootstrap resamples, many
    measures) integrate with one matrix product against these weights.

    Args:
        fractions: Array of shape (P,), strictly increasing, starting at 0 and reaching ``max_fraction``.
        max_fraction: Upper end of the integration, greater than 0.

    Returns:
        Array of shape (P,).

    Raises:
        InvalidInputError: As :func:`area_under_curve`, for the fractions.

    Example:
        >>> area_weights(np.array([0.0, 0.5, 1.0])).tolist()
        [0.25, 0.5, 0.25]
    """
    grid = _as_vector(fractions, "fractions")
    if grid.size < 2:
        raise InvalidInputError(f"a curve needs at least two points to have an area, got {grid.size}")
    if np.any(np.diff(grid) <= 0):
        raise InvalidInputError("fractions must be strictly increasing")
    if not np.isfinite(max_fraction) or max_fraction <= 0:
        raise InvalidInputError(f"max_fraction must be a positive number, got {max_fraction!r}")
    if grid[0] != 0.0 or grid[-1] < max_fraction:
        raise InvalidInputError(f"fractions must cover [0, {max_fraction}], got [{grid[0]}, {grid[-1]}]")
    # The points below max_fraction, then the curve linearly interpolated at max_fraction (which shares its
    # value between the two grid points around it).
    inside = int(np.count_nonzero(grid < max_fraction))
    x = np.append(grid[:inside], max_fraction)
    interpolation = np.zeros((inside + 1, grid.size))
    interpolation[np.arange(inside), np.arange(inside)] = 1.0
    upper = min(inside, grid.size - 1)
    if grid[upper] == max_fraction:
        interpolation[inside, upper] = 1.0
    else:
        share = (max_fraction - grid[inside - 1]) / (grid[upper] - grid[inside - 1])
        interpolation[inside, inside - 1], interpolation[inside, upper] = 1.0 - share, share
    widths = np.diff(x) / 2.0
    trapezoid = np.zeros(inside + 1)
    trapezoid[:-1] += widths
    trapezoid[1:] += widths
    return trapezoid @ interpolation


def relative_auc(
    curve: tuple[np.ndarray, np.ndarray],
    no_correction: tuple[np.ndarray, np.ndarray],
    oracle: tuple[np.ndarray, np.ndarray],
    *,
    max_fraction: float = 1.0,
) -> float:
    """Area under ``curve`` between no correction (0 %) and the oracle (100 %), in percent.

    ``100 · (AUC - AUC_none) / (AUC_oracle - AUC_none)``, each area over [0, max_fraction]. Random ranking
    scores about ``100 · (AUC_random - AUC_none) / (AUC_oracle - AUC_none)``, not 0; a ranking worse than
    random can score below that, and below 0.

    Args:
        curve: ``(fractions, mean_iou)`` of the ranking to judge, e.g. from :func:`correction_curve`.
        no_correction: ``(fractions, mean_iou)`` from :func:`no_correction_curve`.
        oracle: ``(fractions, mean_iou)`` from :func:`oracle_curve`.
        max_fraction: Upper end of the fractions considered.

    Returns:
        The relative area in percent, or NaN when the oracle's area does not exceed the no-correction area
        (correction cannot gain anything, e.g. every corrected IoU equals the base IoU), where the measure
        is undefined.

    Raises:
        InvalidInputError: As :func:`area_under_curve`, for any of the three curves.

    Example:
        >>> base, corrected = np.array([0.5, 0.2]), np.array([0.6, 1.0])
        >>> none, oracle = no_correction_curve(base), oracle_curve(base, corrected)
        >>> worst_first = correction_curve(base, corrected, np.array([0.9, 0.1]))
        >>> round(relative_auc(oracle, none, oracle), 6), round(relative_auc(worst_first, none, oracle), 1)
        (100.0, 44.4)
    """
    curve_area = area_under_curve(*curve, max_fraction=max_fraction)
    none_area = area_under_curve(*no_correction, max_fraction=max_fraction)
    oracle_area = area_under_curve(*oracle, max_fraction=max_fraction)
    return float(relative_area(curve_area, none_area, oracle_area))


def relative_area(
    curve_area: float | np.ndarray, none_area: float | np.ndarray, oracle_area: float | np.ndarray
) -> np.ndarray:
    """``100 · (area - none) / (oracle - none)`` elementwise, NaN where the oracle gains nothing over no correction.

    The arithmetic of :func:`relative_auc` on areas already computed (e.g. with :func:`area_weights`), for arrays.

    Example:
        >>> relative_area(np.array([0.5, 0.6]), 0.25, np.array([1.25, 0.25])).tolist()
        [25.0, nan]
    """
    curve_area, none_area, oracle_area = np.broadcast_arrays(
        np.asarray(curve_area, float), np.asarray(none_area, float), np.asarray(oracle_area, float)
    )
    possible_gain = oracle_area - none_area
    gains = possible_gain > _NO_GAIN_TOLERANCE
    result = np.full(possible_gain.shape, np.nan)
    np.divide(100.0 * (curve_area - none_area), possible_gain, out=result, where=gains)
    return result


def pearson_matrix(columns: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pearson correlation between every pair of columns.

    A column whose values are all equal (or that has fewer than two values) has no defined correlation:
    its row and column of the matrix, diagonal included, are NaN. No warning is emitted for it.

    Args:
        columns: Mapping from name to a 1-D array; all arrays have the same length.

    Returns:
        The names in the mapping's order and an array of shape (K, K) whose entry (i, j) is the
        correlation of columns i and j.

    Raises:
        InvalidInputError: If a column is not 1-D, contains NaN or infinity, or the lengths differ.

    Example:
        >>> names, matrix = pearson_matrix({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([3.0, 2.0, 1.0])})
        >>> names, matrix.round(6).tolist()
        (['a', 'b'], [[1.0, -1.0], [-1.0, 1.0]])
    """
    names = list(columns)
    vectors = [_as_vector(columns[name], f"column {name!r}") for name in names]
    lengths = {vector.size for vector in vectors}
    if len(lengths) > 1:
        sizes = ", ".join(f"{name}: {vector.size}" for name, vector in zip(names, vectors, strict=True))
        raise InvalidInputError(f"all columns must have the same length, got {sizes}")
    if not names:
        return names, np.empty((0, 0))

    data = np.stack(vectors)
    # Equality with the first value, not a zero standard deviation: the mean of a constant column of
    # 0.1 is not exactly 0.1 in floating point, and dividing by that rounding error would give noise.
    constant = np.array([vector.size < 2 or bool(np.all(vector == vector[0])) for vector in vectors])
    centered = data - data.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(centered**2, axis=1))
    normalized = np.zeros_like(centered)
    normalized[~constant] = centered[~constant] / norms[~constant, np.newaxis]
    matrix = np.clip(normalized @ normalized.T, -1.0, 1.0)
    np.fill_diagonal(matrix, 1.0)
    matrix[constant, :] = np.nan
    matrix[:, constant] = np.nan
    return names, matrix


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equally long arrays, or NaN where it is undefined (a constant array).

    The same computation as every entry of :func:`pearson_matrix`, which it calls.

    Args:
        x: Array of shape (N,), finite.
        y: Array of shape (N,), finite.

    Returns:
        The correlation in [-1, 1], or NaN when either array has fewer than two values or all values equal.

    Raises:
        InvalidInputError: As :func:`pearson_matrix`.

    Example:
        >>> round(pearson(np.array([1.0, 2.0, 4.0]), np.array([8.0, 4.0, 2.0])), 4)
        -0.9286
        >>> pearson(np.array([1.0, 2.0]), np.array([5.0, 5.0]))
        nan
    """
    _, matrix = pearson_matrix({"x": x, "y": y})
    return float(matrix[0, 1])


#: Default number of bootstrap resamples.
DEFAULT_BOOTSTRAP_RESAMPLES = 1000


def bootstrap_statistics(
    statistic: Callable[[np.ndarray], float | np.ndarray],
    num_objects: int,
    *,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """A statistic of N objects on bootstrap resamples: N objects drawn with replacement, ``resamples`` times.

    The resamples depend only on ``num_objects``, ``resamples`` and ``seed``, so statistics bootstrapped with one
    seed are paired: the same resample holds the same objects for each of them.

    Args:
        statistic: Function of the resampled objects' indices (an int array of length N) returning a number or an
            array of numbers (e.g. one per AUC range); NaN is allowed.
        num_objects: N, at least 1.
        resamples: Number of resamples, at least 1.
        seed: Seed of the generator that draws the resamples.

    Returns:
        Array of shape ``(resamples, *shape of the statistic)``.

    Example:
        >>> values = np.array([1.0, 2.0, 3.0])
        >>> means = bootstrap_statistics(lambda index: values[index].mean(), 3, resamples=4000, seed=0)
        >>> means.shape, bool(means.min() >= 1.0 and means.max() <= 3.0), round(float(means.mean()), 1)
        ((4000,), True, 2.0)
    """
    num_objects = check_int(num_objects, "number of objects", minimum=1)
    resamples = check_int(resamples, "bootstrap resamples", minimum=1)
    rng = np.random.default_rng(check_int(seed, "bootstrap seed", minimum=0))
    return np.stack(
        [np.asarray(statistic(rng.integers(0, num_objects, size=num_objects)), dtype=float) for _ in range(resamples)]
    )


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of bootstrap samples (axis 0), NaN samples left out; NaN where all are NaN.

    Args:
        samples: Bootstrap values, shape ``(resamples, ...)`` (see :func:`bootstrap_statistics`); samples of
            several runs may be concatenated along axis 0 to pool them.
        confidence: Share of the samples inside the interval, in (0, 1).

    Returns:
        Lower and upper bounds, each of shape ``samples.shape[1:]`` (0-d arrays for scalar statistics).

    Example:
        >>> low, high = percentile_interval(np.arange(1.0, 101.0), confidence=0.9)
        >>> round(float(low), 2), round(float(high), 2)
        (5.95, 95.05)
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    samples = np.asarray(samples, dtype=float)
    tail = 100.0 * (1.0 - confidence) / 2.0
    empty = np.isnan(samples).all(axis=0)
    # nanpercentile warns on all-NaN columns: give them a stand-in value and NaN bounds.
    low, high = np.nanpercentile(np.where(empty[None], 0.0, samples), [tail, 100.0 - tail], axis=0)
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)
