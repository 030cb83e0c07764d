"""Post-training calibration of the IoU heads and split-conformal lower bounds on the true IoU (plain numpy).

A reader of "predicted IoU 0.8" should be right about it, and a pipeline that filters masks needs a bound it can
rely on. Per IoU head, on rows of a calibration store (another split than the heads' training data):

* **Calibration map**: a monotone non-decreasing map of the head's prediction, fitted to the true IoU over every
  calibration row, so it never reorders masks that the head ranks apart. Three kinds (:class:`MapKind`): isotonic
  regression (pool-adjacent-violators), an affine map (least squares, slope at least 0), or the identity; by default
  (``auto``) the one whose out-of-fold squared error is least in a K-fold cross-validation over the calibration
  images (:func:`select_map`; ties go to the simpler kind). Each is a :class:`MonotoneMap`: piecewise linear between
  knots, constant beyond them, clipped to [0, 1]. Why choose: a head trained on data like the calibration rows is
  often calibrated to within what a few thousand rows can tell, and isotonic regression, which follows every
  wiggle of its rows, then adds more error than it removes (on the test-bed its out-of-fold squared error was above
  the raw head's for 19 of 24 IoU heads); a head used on other data needs the correction, and the data says which.
* **Split-conformal lower bound**: the calibration rows are split by image; one part fits the bound's own map ``g``
  (of a kind chosen like the calibration map's, by cross-validation within that part only), the other gives the
  residuals ``r = true - g(prediction)``.
  With n residuals and miscoverage α the bound is ``iou_lower = g(prediction) + r_(k)``, the k-th smallest
  residual with ``k = floor((n + 1) α)`` (equivalently the ``ceil((n + 1)(1 - α))``-th smallest of
  ``g - true``); for k = 0 there is no finite quantile and the bound is 0. Clipped to [0, 1]. For a new row
  exchangeable with the calibration rows, **P(true IoU ≥ iou_lower) ≥ 1 − α, marginally** (over rows and
  calibration sets, not for each mask), and at most ``1 − α + 1 / (n + 1)`` for continuous residuals. ``g`` must
  not see the residuals' rows, the calibration map may: so the calibrated IoU uses twice the rows (format 2;
  format 1 used ``g`` for both).
* **Mondrian (per-bin) bound**: the same, separately within bins of ``g(prediction)`` (equal-mass bins of
  the conformal rows, at most :data:`DEFAULT_MAX_BINS`, each with at least ``min_bin_rows`` rows; bins that would
  hold fewer are merged with a neighbour). A bin's bound holds with probability ≥ 1 − α for the rows of that bin,
  hence also marginally, and it is not loosened for easy masks by the residuals of hard ones. A bin with fewer than
  ``1 / α − 1`` rows has no finite quantile at that α and bounds by 0.

The quantiles are stored for every α of :data:`ALPHA_GRID`; another α uses the largest grid value below it, which
keeps the guarantee (a smaller α only lowers the bound). Rows of one image are not independent: the guarantee is
exact for exchangeable rows, and approximately so for the rows of new images.

The expected calibration error (:func:`expected_calibration_error`) uses **equal-mass** bins of the prediction:
``ECE = sum_b (n_b / n) |mean(prediction_b) - mean(true_b)|``.

Everything is stored, JSON-serialisable, in a heads file's metadata under ``"calibration"``
(:meth:`HeadsCalibration.to_json`); the heads' weights are not touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from usam.errors import HeadsFileError, InvalidInputError
from usam.metrics import DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_statistics
from usam.validation import StrEnum, check_choice, check_float, check_int

CALIBRATION_FORMAT_VERSION = 2
"""Version of the ``"calibration"`` entry of a heads file's metadata."""

ALPHA_GRID: tuple[float, ...] = (0.001, 0.002, 0.005, *(round(step / 100, 2) for step in range(1, 51)))
"""Miscoverage levels whose conformal quantiles a calibration stores."""

DEFAULT_ALPHA = 0.1
"""Default miscoverage: ``iou_lower`` holds for at least 90 % of masks."""

EVALUATION_ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.2)
"""Miscoverage levels whose empirical coverage ``usam evaluate`` reports."""

DEFAULT_MIN_BIN_ROWS = 200
"""Fewest conformal rows of a Mondrian bin."""

DEFAULT_MAX_BINS = 10
"""Most Mondrian bins."""

DEFAULT_MAP_FOLDS = 5
"""Folds over the calibration images of the cross-validation that chooses a map's kind."""

DEFAULT_FIT_FRACTION = 0.5
"""Share of the calibration images whose rows fit the bound's map; the others give the conformal residuals."""

ECE_BINS = 15
"""Equal-mass bins of the expected calibration error and the reliability diagram."""

MIN_ROWS = 20
"""Fewest rows a head needs to be calibrated (in each of the two parts)."""

# An α read from a file or typed by a user may miss a grid value by a rounding error.
_ALPHA_TOLERANCE = 1e-9


class MapKind(StrEnum):
    """Which monotone map calibrates a head's prediction."""

    AUTO = "auto"
    """The fitted kind below with the least out-of-fold squared error (:func:`select_map`)."""
    IDENTITY = "identity"
    """The prediction itself, clipped to [0, 1]: no correction."""
    AFFINE = "affine"
    """``a * prediction + b`` by least squares, with ``a >= 0``: a shift and a stretch."""
    ISOTONIC = "isotonic"
    """Isotonic regression: any monotone shape."""


FITTED_MAP_KINDS: tuple[MapKind, ...] = (MapKind.IDENTITY, MapKind.AFFINE, MapKind.ISOTONIC)
"""The kinds :data:`MapKind.AUTO` chooses from, simplest first (a tie goes to the simpler one)."""


class BoundKind(StrEnum):
    """Which conformal lower bound is reported."""

    MONDRIAN = "mondrian"
    """Per bin of the calibrated prediction (tighter for easy masks; still marginally valid)."""
    MARGINAL = "marginal"
    """One quantile for all rows."""


def _as_pairs(predictions: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    if predictions.shape != targets.shape:
        raise InvalidInputError(f"{predictions.size} predictions but {targets.size} targets; give one per row")
    if not (np.isfinite(predictions).all() and np.isfinite(targets).all()):
        raise InvalidInputError("predictions and targets must be finite (drop rows with NaN first)")
    return predictions, targets


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` in weighted least squares (isotonic regression).

    Example:
        >>> pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]))
        array([1. , 2.5, 2.5, 4. ])
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    means, totals, sizes = [], [], []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        mean, total, size = value, weight, 1
        # Merge with the blocks before while they are higher: their pooled mean is the least-squares fit.
        while means and means[-1] > mean:
            previous_total = totals.pop()
            mean = (means.pop() * previous_total + mean * total) / (previous_total + total)
            total += previous_total
            size += sizes.pop()
        means.append(mean)
        totals.append(total)
        sizes.append(size)
    return np.repeat(np.asarray(means, dtype=np.float64), np.asarray(sizes, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class MonotoneMap:
    """A monotone map from a head's prediction to a calibrated IoU, piecewise linear between knots.

    Every :class:`MapKind` is stored this way (an affine map as the ends of its line, the identity as (0, 0) and
    (1, 1)), so one reader evaluates them all.

    Attributes:
        knots_x: ``(K,)`` increasing predictions.
        knots_y: ``(K,)`` non-decreasing calibrated values in [0, 1].
    """

    knots_x: np.ndarray
    knots_y: np.ndarray

    @classmethod
    def fit(cls, predictions: Any, targets: Any, kind: MapKind | str = MapKind.ISOTONIC) -> MonotoneMap:
        """Fit a map of one kind (not ``auto``: see :func:`select_map`) to ``targets`` given ``predictions``."""
        kind = check_choice(MapKind, kind, "map kind")
        predictions, targets = _as_pairs(predictions, targets)
        if predictions.size == 0:
            raise InvalidInputError("cannot fit a calibration without rows")
        if kind is MapKind.IDENTITY:
            return cls(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
        if kind is MapKind.AFFINE:
            return cls._affine(predictions, targets)
        if kind is MapKind.ISOTONIC:
            return cls._isotonic(predictions, targets)
        raise InvalidInputError("map kind 'auto' chooses among the others: use select_map")

    @classmethod
    def _affine(cls, predictions: np.ndarray, targets: np.ndarray) -> MonotoneMap:
        low, high = float(predictions.min()), float(predictions.max())
        spread = np.var(predictions)
        slope = max(float(np.mean((predictions - predictions.mean()) * targets) / spread), 0.0) if spread > 0 else 0.0
        intercept = float(targets.mean()) - slope * float(predictions.mean())
        if high == low or slope == 0.0:
            return cls(np.array([low]), np.clip(np.array([slope * low + intercept]), 0.0, 1.0))
        # Knots at the ends of the rows and where the line leaves [0, 1], so the clipped line is exact between them.
        crossings = [(level - intercept) / slope for level in (0.0, 1.0)]
        knots_x = np.unique([low, high, *(x for x in crossings if low < x < high)])
        return cls(knots_x, np.clip(slope * knots_x + intercept, 0.0, 1.0))

    @classmethod
    def _isotonic(cls, predictions: np.ndarray, targets: np.ndarray) -> MonotoneMap:
        # Equal predictions are pooled first; of each constant block only its two ends are kept as knots.
        unique, inverse, counts = np.unique(predictions, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=targets) / counts
        fitted = np.clip(pool_adjacent_violators(means, counts.astype(np.float64)), 0.0, 1.0)
        # A knot is needed where the fitted value changes on either side of it.
        changes = np.diff(fitted) != 0
        keep = np.ones(unique.size, dtype=bool)
        keep[1:-1] = changes[:-1] | changes[1:]
        return cls(unique[keep], fitted[keep])

    def __call__(self, predictions: Any) -> np.ndarray:
        """Calibrated values of some predictions (any shape), in [0, 1]."""
        values = np.asarray(predictions, dtype=np.float64)
        return np.clip(np.interp(values, self.knots_x, self.knots_y), 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        """JSON data (exact: floats round-trip through JSON)."""
        return {"x": self.knots_x.tolist(), "y": self.knots_y.tolist()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MonotoneMap:
        """Inverse of :meth:`to_json`.

        Raises:
            HeadsFileError: If the knots are malformed or not monotone.
        """
        knots_x = np.asarray(data["x"], dtype=np.float64)
        knots_y = np.asarray(data["y"], dtype=np.float64)
        if (
            knots_x.ndim != 1
            or knots_x.size == 0
            or knots_x.shape != knots_y.shape
            or not (np.isfinite(knots_x).all() and np.isfinite(knots_y).all())
            or (np.diff(knots_x) <= 0).any()
            or (np.diff(knots_y) < 0).any()
        ):
            raise HeadsFileError("a calibration map needs increasing knots with non-decreasing finite values")
        return cls(knots_x, knots_y)


IsotonicMap = MonotoneMap
"""The former name of :class:`MonotoneMap` (its ``fit`` still defaults to isotonic regression)."""


def _groups(groups: Any | None, size: int, part: str = "") -> np.ndarray | None:
    """The image id of each of ``size`` rows as a flat array (None stays None); one per row or an error."""
    if groups is None:
        return None
    groups = np.asarray(groups).reshape(-1)
    if groups.size != size:
        rows = f"{size} {part} rows" if part else f"{size} rows"
        raise InvalidInputError(f"{groups.size} image ids for {rows}; give one per row")
    return groups


def image_folds(groups: Any, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index of each row for a K-fold split that keeps the rows of one group (image) together.

    Groups are dealt to folds in a seeded random order, as evenly as the number of groups allows.
    """
    groups = np.asarray(groups).reshape(-1)
    unique, inverse = np.unique(groups, return_inverse=True)
    fold_of_group = np.random.default_rng(seed).permutation(unique.size) % folds
    return fold_of_group[inverse]


def cross_validated_errors(
    predictions: Any,
    targets: Any,
    groups: Any | None = None,
    *,
    kinds: Sequence[MapKind | str] = FITTED_MAP_KINDS,
    folds: int = DEFAULT_MAP_FOLDS,
    seed: int = 0,
) -> dict[str, float]:
    """Mean out-of-fold squared error of each kind of map, folds over groups (images).

    Args:
        predictions: ``(n,)`` the head's predictions.
        targets: ``(n,)`` the true IoUs.
        groups: ``(n,)`` the image of each row (default: each row its own); one image's rows stay in one fold.
        kinds: Kinds of map to compare (not ``auto``).
        folds: Folds, at most the number of groups.
        seed: Seed of the assignment of groups to folds.

    Returns:
        Kind name -> mean over all rows of ``(map fitted without the row's fold (prediction) - target) ** 2``.

    Raises:
        InvalidInputError: If there are fewer than two groups or values are not finite.
    """
    predictions, targets = _as_pairs(predictions, targets)
    groups = _groups(groups, predictions.size)
    groups = np.arange(predictions.size) if groups is None else groups
    num_groups = np.unique(groups).size
    if num_groups < 2:
        raise InvalidInputError("choosing a map by cross-validation needs rows of at least two images")
    folds = min(check_int(folds, "folds", minimum=2), num_groups)
    fold = image_folds(groups, folds, seed)
    errors = {str(check_choice(MapKind, kind, "map kind")): 0.0 for kind in kinds}
    for index in range(folds):
        held_out = fold == index
        for kind in errors:
            mapping = MonotoneMap.fit(predictions[~held_out], targets[~held_out], kind)
            errors[kind] += float(np.sum((mapping(predictions[held_out]) - targets[held_out]) ** 2))
    return {kind: total / predictions.size for kind, total in errors.items()}


def select_map(
    predictions: Any,
    targets: Any,
    groups: Any | None = None,
    *,
    folds: int = DEFAULT_MAP_FOLDS,
    seed: int = 0,
) -> tuple[MonotoneMap, MapKind, dict[str, float]]:
    """The kind of map with the least out-of-fold squared error (:func:`cross_validated_errors`), fitted on all rows.

    Returns:
        The map, its kind and every kind's out-of-fold error. On a tie the simpler kind wins
        (:data:`FITTED_MAP_KINDS` order).
    """
    errors = cross_validated_errors(predictions, targets, groups, folds=folds, seed=seed)
    kind = min(FITTED_MAP_KINDS, key=lambda candidate: errors[str(candidate)])  # min keeps the first of equals
    return MonotoneMap.fit(predictions, targets, kind), kind, errors


def _fit_map(
    predictions: np.ndarray, targets: np.ndarray, groups: np.ndarray | None, kind: MapKind, folds: int, seed: int
) -> tuple[MonotoneMap, MapKind, dict[str, float] | None]:
    if kind is MapKind.AUTO:
        return select_map(predictions, targets, groups, folds=folds, seed=seed)
    return MonotoneMap.fit(predictions, targets, kind), kind, None


def conformal_rank(num_rows: int, alpha: float) -> int:
    """The rank k (1-based; 0: none) of the residual that bounds ``true - calibrated`` from below.

    ``k = floor((n + 1) α)``: then P(r_new ≥ r_(k)) ≥ 1 − α for a new residual exchangeable with the n others.

    Example:
        >>> conformal_rank(99, 0.1), conformal_rank(8, 0.1)
        (10, 0)
    """
    return math.floor((num_rows + 1) * alpha + _ALPHA_TOLERANCE)


def conformal_lower_quantile(residuals: Any, alpha: float) -> float:
    """The split-conformal lower quantile of residuals ``true - calibrated``: their k-th smallest, or -inf.

    Args:
        residuals: ``(n,)`` residuals of the conformal rows.
        alpha: Miscoverage in (0, 1).

    Returns:
        ``r_(k)`` with ``k = floor((n + 1) α)`` (:func:`conformal_rank`); ``-inf`` if k = 0.
    """
    alpha = check_alpha(alpha)
    residuals = np.asarray(residuals, dtype=np.float64).reshape(-1)
    rank = conformal_rank(residuals.size, alpha)
    if rank == 0:
        return -math.inf
    return float(np.partition(residuals, rank - 1)[rank - 1])


def check_alpha(alpha: object) -> float:
    """``alpha`` as a miscoverage in (0, 1).

    Raises:
        InvalidInputError: If it is not a number strictly between 0 and 1.
    """
    value = check_float(alpha, "alpha (miscoverage of the IoU lower bound)", minimum=0.0, exclusive_minimum=True)
    if value >= 1.0:
        raise InvalidInputError(f"alpha (miscoverage of the IoU lower bound) must be less than 1, got {value}")
    return value


def alpha_index(alpha: float, alphas: Sequence[float] = ALPHA_GRID) -> int:
    """Index of the largest stored α that is not above ``alpha`` (a smaller α keeps the guarantee).

    Raises:
        InvalidInputError: If ``alpha`` is not in (0, 1) or below the smallest stored α.
    """
    alpha = check_alpha(alpha)
    below = [index for index, value in enumerate(alphas) if value <= alpha + _ALPHA_TOLERANCE]
    if not below:
        raise InvalidInputError(f"alpha must be at least {min(alphas)} (the smallest stored level), got {alpha}")
    return max(below, key=lambda index: alphas[index])


@dataclasses.dataclass(frozen=True)
class ConformalQuantiles:
    """The lower quantiles of one group of residuals, one per stored α.

    Attributes:
        rows: Number of residuals.
        quantiles: ``(A,)`` per α of :attr:`HeadCalibration.alphas`; -inf where there is no finite quantile.
    """

    rows: int
    quantiles: np.ndarray

    @classmethod
    def fit(cls, residuals: np.ndarray, alphas: Sequence[float]) -> ConformalQuantiles:
        """The quantiles of ``residuals`` at every α."""
        return cls(int(residuals.size), np.array([conformal_lower_quantile(residuals, alpha) for alpha in alphas]))

    def to_json(self) -> dict[str, Any]:
        """JSON data; -inf is written as null (strict JSON)."""
        return {"rows": self.rows, "quantiles": [None if math.isinf(q) else q for q in self.quantiles.tolist()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ConformalQuantiles:
        """Inverse of :meth:`to_json`."""
        values = [-math.inf if value is None else float(value) for value in data["quantiles"]]
        return cls(int(data["rows"]), np.asarray(values, dtype=np.float64))


def mondrian_edges(calibrated: np.ndarray, *, min_bin_rows: int, max_bins: int) -> np.ndarray:
    """Inner edges of equal-mass bins of calibrated predictions, each bin holding at least ``min_bin_rows`` rows.

    A value v falls into bin ``searchsorted(edges, v, side="right")``, i.e. bin b is ``[edges[b-1], edges[b])``.
    Ties can make bins uneven; a bin below the minimum is merged with its smaller neighbour.
    """
    values = np.sort(np.asarray(calibrated, dtype=np.float64))
    count = min(max_bins, values.size // max(min_bin_rows, 1))
    if count <= 1:
        return np.empty(0)
    edges = np.unique(values[(np.arange(1, count) * values.size) // count])
    edges = edges[edges > values[0]]  # an edge at the minimum would leave the first bin empty
    while edges.size:
        sizes = np.diff(np.searchsorted(values, edges, side="left"), prepend=0, append=values.size)
        smallest = int(np.argmin(sizes))
        if sizes[smallest] >= min_bin_rows:
            break
        # Remove the edge between the smallest bin and its smaller neighbour.
        if smallest == 0:
            remove = 0
        elif smallest == sizes.size - 1:
            remove = smallest - 1
        else:
            remove = smallest - 1 if sizes[smallest - 1] <= sizes[smallest + 1] else smallest
        edges = np.delete(edges, remove)
    return edges


@dataclasses.dataclass(frozen=True)
class HeadCalibration:
    """The calibration of one IoU head: its monotone maps and its conformal quantiles.

    Attributes:
        mapping: Prediction -> calibrated IoU, fitted on every calibration row.
        alphas: The stored miscoverage levels.
        marginal: Quantiles of all conformal residuals ``true - bound_mapping(prediction)``.
        bin_edges: Inner edges of the Mondrian bins of ``bound_mapping(prediction)`` (empty: one bin).
        bins: Quantiles of each Mondrian bin.
        fit_rows: Rows that fitted ``bound_mapping``.
        bound_mapping: The map of the bound, fitted on the fit part only, so that its residuals on the conformal
            part are those of unseen rows (the split-conformal guarantee needs that); None: ``mapping`` itself
            (calibrations of format 1, where one map fitted on the fit part served both).
        map_kind: The kind of ``mapping`` (files written before kinds were chosen: isotonic).
        bound_map_kind: The kind of ``bound_mapping``.
        map_errors: Out-of-fold squared error of each kind on all rows, when the kind was chosen by them.
    """

    mapping: MonotoneMap
    alphas: tuple[float, ...]
    marginal: ConformalQuantiles
    bin_edges: np.ndarray
    bins: tuple[ConformalQuantiles, ...]
    fit_rows: int
    bound_mapping: MonotoneMap | None = None
    map_kind: MapKind = MapKind.ISOTONIC
    bound_map_kind: MapKind = MapKind.ISOTONIC
    map_errors: dict[str, float] | None = None

    @classmethod
    def fit(
        cls,
        fit_predictions: Any,
        fit_targets: Any,
        conformal_predictions: Any,
        conformal_targets: Any,
        *,
        alphas: Sequence[float] = ALPHA_GRID,
        min_bin_rows: int = DEFAULT_MIN_BIN_ROWS,
        max_bins: int = DEFAULT_MAX_BINS,
        map_kind: MapKind | str = MapKind.AUTO,
        fit_groups: Any | None = None,
        conformal_groups: Any | None = None,
        folds: int = DEFAULT_MAP_FOLDS,
        seed: int = 0,
    ) -> HeadCalibration:
        """Fit the calibration map on all rows; the bound split-conformally (map on one part, quantiles on the other).

        The calibrated IoU owes no guarantee to held-out rows, so its map uses every row: on the test-bed this
        lowered the held-out expected calibration error below that of the half-data map in 11 of 12 heads. With
        ``map_kind="auto"`` each map's kind is chosen by cross-validation over the images of the rows it is fitted
        on (the bound's map within the fit part only, so the residuals stay those of unseen rows).

        Args:
            fit_predictions: The head's predictions on the rows that fit the bound's map.
            fit_targets: The true IoUs of those rows.
            conformal_predictions: The head's predictions on the rows that give the residuals.
            conformal_targets: The true IoUs of those rows.
            alphas: Miscoverage levels to store.
            min_bin_rows: Fewest rows of a Mondrian bin.
            max_bins: Most Mondrian bins.
            map_kind: Kind of both maps, or ``auto`` (:func:`select_map`).
            fit_groups: The image of each fit row, for the cross-validation (default: each row its own).
            conformal_groups: The image of each conformal row.
            folds: Folds of the cross-validation.
            seed: Seed of its assignment of images to folds.

        Raises:
            InvalidInputError: If a part has fewer than :data:`MIN_ROWS` rows or values are not finite.
        """
        map_kind = check_choice(MapKind, map_kind, "map kind")
        min_bin_rows = check_int(min_bin_rows, "min_bin_rows", minimum=1)
        max_bins = check_int(max_bins, "max_bins", minimum=1)
        alphas = tuple(check_alpha(alpha) for alpha in alphas)
        fit_predictions, fit_targets = _as_pairs(fit_predictions, fit_targets)
        conformal_predictions, conformal_targets = _as_pairs(conformal_predictions, conformal_targets)
        if min(fit_predictions.size, conformal_predictions.size) < MIN_ROWS:
            raise InvalidInputError(
                f"calibration needs at least {MIN_ROWS} rows to fit the map and {MIN_ROWS} for the bound, got "
                f"{fit_predictions.size} and {conformal_predictions.size}; use a larger calibration store"
            )
        fit_groups = _groups(fit_groups, fit_predictions.size, "fit")
        conformal_groups = _groups(conformal_groups, conformal_predictions.size, "conformal")
        if (fit_groups is None) != (conformal_groups is None):
            raise InvalidInputError("give the image ids of both parts' rows, or of neither")
        if fit_groups is None or conformal_groups is None:
            # Rows without images are their own groups; numbered apart so the two parts never share one.
            fit_groups = np.arange(fit_predictions.size)
            conformal_groups = fit_predictions.size + np.arange(conformal_predictions.size)
        bound_mapping, bound_kind, _ = _fit_map(fit_predictions, fit_targets, fit_groups, map_kind, folds, seed)
        mapping, kind, errors = _fit_map(
            np.concatenate([fit_predictions, conformal_predictions]),
            np.concatenate([fit_targets, conformal_targets]),
            np.concatenate([fit_groups, conformal_groups]),
            map_kind, folds, seed,
        )  # fmt: skip
        bound_calibrated = bound_mapping(conformal_predictions)
        residuals = conformal_targets - bound_calibrated
        edges = mondrian_edges(bound_calibrated, min_bin_rows=min_bin_rows, max_bins=max_bins)
        bin_of_row = np.searchsorted(edges, bound_calibrated, side="right")
        bins = tuple(ConformalQuantiles.fit(residuals[bin_of_row == index], alphas) for index in range(edges.size + 1))
        marginal = ConformalQuantiles.fit(residuals, alphas)
        return cls(
            mapping, alphas, marginal, edges, bins, int(fit_predictions.size), bound_mapping, kind, bound_kind, errors
        )

    def calibrate(self, predictions: Any) -> np.ndarray:
        """Calibrated IoU of some predictions of the head (any shape)."""
        return self.mapping(predictions)

    def lower_bound(
        self, predictions: Any, alpha: float = DEFAULT_ALPHA, bound: BoundKind | str = BoundKind.MONDRIAN
    ) -> np.ndarray:
        """The conformal lower bound on the true IoU for some predictions of the head (any shape), in [0, 1].

        Args:
            predictions: The head's (uncalibrated) predictions.
            alpha: Miscoverage; the largest stored α not above it is used.
            bound: ``"mondrian"`` (per bin) or ``"marginal"``.
        """
        bound = check_choice(BoundKind, bound, "bound")
        index = alpha_index(alpha, self.alphas)
        bound_calibrated = (self.bound_mapping or self.mapping)(predictions)
        if bound is BoundKind.MARGINAL:
            quantile: Any = self.marginal.quantiles[index]
        else:
            per_bin = np.array([group.quantiles[index] for group in self.bins])
            quantile = per_bin[np.searchsorted(self.bin_edges, bound_calibrated, side="right")]
        # -inf + calibrated clips to 0: no finite quantile, no bound above the trivial one.
        return np.clip(bound_calibrated + quantile, 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        """JSON data of this head's calibration."""
        data = {
            "map": self.mapping.to_json(),
            "fit_rows": self.fit_rows,
            "marginal": self.marginal.to_json(),
            "mondrian": {"edges": self.bin_edges.tolist(), "bins": [group.to_json() for group in self.bins]},
        }
        if self.bound_mapping is not None:
            data["bound_map"] = self.bound_mapping.to_json()
        data["map_kind"] = str(self.map_kind)
        data["bound_map_kind"] = str(self.bound_map_kind)
        if self.map_errors is not None:
            data["map_errors"] = dict(self.map_errors)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], alphas: tuple[float, ...]) -> HeadCalibration:
        """Inverse of :meth:`to_json`, with the α grid stored next to it (format 1 has no ``bound_map``)."""
        mondrian = data["mondrian"]
        edges = np.asarray(mondrian["edges"], dtype=np.float64).reshape(-1)
        bins = tuple(ConformalQuantiles.from_json(group) for group in mondrian["bins"])
        groups = (ConformalQuantiles.from_json(data["marginal"]), *bins)
        if len(bins) != edges.size + 1 or any(group.quantiles.size != len(alphas) for group in groups):
            raise HeadsFileError("calibration bins do not match their edges or the stored alphas")
        bound_mapping = MonotoneMap.from_json(data["bound_map"]) if "bound_map" in data else None
        errors = data.get("map_errors")
        return cls(
            MonotoneMap.from_json(data["map"]), alphas, groups[0], edges, bins, int(data.get("fit_rows", 0)),
            bound_mapping,
            check_choice(MapKind, data.get("map_kind", MapKind.ISOTONIC), "map kind"),
            check_choice(MapKind, data.get("bound_map_kind", MapKind.ISOTONIC), "map kind"),
            {str(kind): float(value) for kind, value in errors.items()} if errors is not None else None,
        )  # fmt: skip


@dataclasses.dataclass
class HeadsCalibration:
    """The calibration of a heads file's IoU heads, as stored in its metadata under ``"calibration"``.

    Attributes:
        heads: Per calibrated IoU head, its calibration.
        alphas: The stored miscoverage levels.
        source: Where and how it was fitted (store, rows, split, seed, ...).
    """

    heads: dict[str, HeadCalibration]
    alphas: tuple[float, ...] = ALPHA_GRID
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    def apply(
        self,
        values: Mapping[str, np.ndarray],
        alpha: float = DEFAULT_ALPHA,
        bound: BoundKind | str = BoundKind.MONDRIAN,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Calibrated IoU and lower bound of every calibrated head among ``values`` (head name -> predictions).

        Returns:
            ``(calibrated, lower)``, each head name -> array of the predictions' shape.
        """
        calibrated, lower = {}, {}
        for name, head in self.heads.items():
            if name in values:
                calibrated[name] = head.calibrate(values[name])
                lower[name] = head.lower_bound(values[name], alpha, bound)
        return calibrated, lower

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON data for the heads file's metadata."""
        return {
            "format_version": CALIBRATION_FORMAT_VERSION,
            "method": "a monotone map (identity, affine or isotonic, per head: map_kind; piecewise linear, clipped "
            "to [0, 1]) fitted on every calibration row; split-conformal lower bound: such a map fitted on the fit "
            "part plus quantiles of true - that map on the conformal part, marginal and Mondrian (bins of that "
            "map's value); kinds chosen by cross-validation over images where map_errors is given",
            "guarantee": "marginal: P(true IoU >= iou_lower) >= 1 - alpha for rows exchangeable with the "
            "calibration rows; not per mask",
            "alphas": list(self.alphas),
            "source": dict(self.source),
            "heads": {name: head.to_json() for name, head in self.heads.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadsCalibration:
        """Inverse of :meth:`to_json`.

        Raises:
            HeadsFileError: If the data is malformed or written by a newer usam.
        """
        try:
            if data.get("format_version", 0) > CALIBRATION_FORMAT_VERSION:
                raise HeadsFileError(
                    f"the heads' calibration was written by a newer usam (format {data['format_version']}); upgrade"
                )
            alphas = tuple(float(alpha) for alpha in data["alphas"])
            heads = {name: HeadCalibration.from_json(entry, alphas) for name, entry in data["heads"].items()}
            return cls(heads, alphas, dict(data.get("source", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise HeadsFileError(
                f"the heads' calibration metadata is malformed ({type(error).__name__}: {error})"
            ) from None


def expected_calibration_error(predictions: Any, targets: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error with equal-mass bins of the prediction (NaN without rows).

    ``ECE = sum_b (n_b / n) |mean(prediction_b) - mean(target_b)|``.

    Example:
        >>> round(expected_calibration_error([0.2, 0.4, 0.6, 0.8], [0.3, 0.5, 0.7, 0.9], bins=2), 6)
        0.1
    """
    mean_predicted, mean_true, counts = reliability_curve(predictions, targets, bins)
    if counts.sum() == 0:
        return math.nan
    return float(np.sum(counts * np.abs(mean_predicted - mean_true)) / counts.sum())


def ece_change_samples(
    before: Any,
    after: Any,
    targets: Any,
    groups: Any,
    *,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    bins: int = ECE_BINS,
) -> np.ndarray:
    """Bootstrap samples of ``ECE(after) - ECE(before)`` on the same rows, groups (images) resampled with replacement.

    Each resample draws as many groups as there are, with replacement, and takes every row of each drawn group as
    often as the group was drawn; both ECEs are computed on that same resample (paired), so the samples show
    whether a change of the ECE is more than the noise of measuring it on these rows. Rows of one image are not
    independent, hence groups rather than rows. A resample's ECE is :func:`expected_calibration_error` of the
    resampled rows taken in the order of the full sample's predictions (the order a stable sort gives).

    Args:
        before: ``(n,)`` raw predictions.
        after: ``(n,)`` calibrated predictions of the same rows.
        targets: ``(n,)`` true values.
        groups: ``(n,)`` group (image) of each row, any hashable values.
        resamples: Number of resamples.
        seed: Seed of the resamples; the same seed and groups give the same resamples (paired across heads files).
        bins: Equal-mass bins of the ECE.

    Returns:
        ``(resamples,)`` differences; NaN for an empty input.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> raw = rng.uniform(size=400)
        >>> truth = np.clip(raw + rng.normal(0, 0.1, 400), 0, 1)
        >>> changes = ece_change_samples(raw + 0.1, raw, truth, np.arange(400) // 4, resamples=200)
        >>> bool(np.all(changes < 0))
        True
    """
    before, targets = _as_pairs(before, targets)
    after, _ = _as_pairs(after, targets)
    groups = np.asarray(groups)
    if groups.shape != targets.shape:
        raise InvalidInputError(f"groups must have one entry per row ({targets.size}), got shape {groups.shape}")
    bins = check_int(bins, "bins", minimum=1)
    if targets.size == 0:
        return np.full(check_int(resamples, "bootstrap resamples", minimum=1), math.nan)
    _, group_index = np.unique(groups, return_inverse=True)
    num_groups = int(group_index.max()) + 1
    sorted_before = _SortedResiduals(before, targets)
    sorted_after = _SortedResiduals(after, targets)

    def change(drawn: np.ndarray) -> float:
        weights = np.bincount(drawn, minlength=num_groups)[group_index]
        return sorted_after.ece(weights, bins) - sorted_before.ece(weights, bins)

    return bootstrap_statistics(change, num_groups, resamples=resamples, seed=seed)


class _SortedResiduals:
    """Residuals ``prediction - target`` in the stable order of the prediction, for ECEs of repeated rows.

    With each row repeated ``weights[i]`` times in that order, an equal-mass bin's ``n_b |mean prediction - mean
    target|`` is the absolute sum of its residuals, so the ECE needs only cumulative sums of the residuals at the
    bins' edges (a bin's edge may fall between two copies of one row).
    """

    def __init__(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        self.order = np.argsort(predictions, kind="stable")
        self.residuals = (predictions - targets)[self.order]

    def ece(self, weights: np.ndarray, bins: int) -> float:
        counts = weights[self.order]
        ends = np.cumsum(counts)
        total = int(ends[-1])
        if total == 0:
            return math.nan
        used = min(bins, total)
        size, extra = divmod(total, used)
        edges = np.arange(used + 1) * size + np.minimum(np.arange(used + 1), extra)
        # Sum of the residuals of the first `edge` repeated rows: whole rows before the edge plus part of one row.
        cumulative = np.concatenate([[0.0], np.cumsum(counts * self.residuals)])
        starts = ends - counts
        row = np.minimum(np.searchsorted(ends, edges, side="right"), ends.size - 1)
        partial = np.clip(edges - starts[row], 0, counts[row]) * self.residuals[row]
        sums = np.where(edges >= total, cumulative[-1], cumulative[row] + partial)
        return float(np.abs(np.diff(sums)).sum() / total)


def reliability_curve(
    predictions: Any, targets: Any, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean prediction, mean target and row count of equal-mass bins of the prediction (a reliability diagram).

    Returns:
        Three ``(B,)`` arrays, B = min(bins, rows), bins in increasing order of the prediction.
    """
    predictions, targets = _as_pairs(predictions, targets)
    bins = check_int(bins, "bins", minimum=1)
    order = np.argsort(predictions, kind="stable")
    groups = [group for group in np.array_split(order, min(bins, max(predictions.size, 1))) if group.size]
    mean_predicted = np.array([predictions[group].mean() for group in groups])
    mean_true = np.array([targets[group].mean() for group in groups])
    return mean_predicted, mean_true, np.array([group.size for group in groups], dtype=np.int64)


def empirical_coverage(lower: Any, targets: Any) -> float:
    """Share of rows whose true value is at least its lower bound (NaN without rows)."""
    lower, targets = _as_pairs(lower, targets)
    return float(np.mean(targets >= lower)) if targets.size else math.nan
