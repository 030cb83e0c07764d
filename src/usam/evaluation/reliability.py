"""Calibration on a token store: fitting the IoU heads' calibration (``usam calibrate``) and checking it.

Which rows and which target: each IoU head is calibrated and checked on exactly the rows it learns from in
training, with its own target (:func:`usam.training.load_training_data`, with the heads' pairing, inputs and, if
their training record says so, pooled size targets): ``iou_<size>`` on that size's rows with their ``iou`` (every
row with that size's IoU of the object when pooled), ``iou_unsupervised`` on every row with ``unsupervised_iou``,
``iou_dense_prompt`` on every row with ``iou_dense_prompt``. The mask is the best of SAM2's three outputs, as in
training; the guarantee of the bound is for such rows.

Fitting (:func:`fit_calibration`) splits the store's images at random (seeded) into a part that fits the bound's
map and a part that gives the conformal residuals (see :mod:`usam.calibration`); each map's kind is chosen by
cross-validation over the images of its rows. Checking
(:func:`check_calibration`, part of ``usam evaluate``) measures on another store's rows the expected calibration
error of every IoU head before and, if calibrated, after calibration, and the empirical coverage of both bounds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.calibration import (
    DEFAULT_FIT_FRACTION,
    DEFAULT_MAP_FOLDS,
    DEFAULT_MAX_BINS,
    DEFAULT_MIN_BIN_ROWS,
    ECE_BINS,
    EVALUATION_ALPHAS,
    BoundKind,
    HeadCalibration,
    HeadsCalibration,
    MapKind,
    ece_change_samples,
    empirical_coverage,
    expected_calibration_error,
    reliability_curve,
)
from usam.errors import InvalidInputError
from usam.evaluation.rows import run_heads
from usam.head_table import HEADS, HeadKind, SizeTargets, size_targets_of
from usam.heads import UncertaintyHeads, load_heads
from usam.metrics import DEFAULT_BOOTSTRAP_RESAMPLES, percentile_interval
from usam.store import StoreReader
from usam.training import TrainingWarning, check_output_path, load_training_data
from usam.validation import check_choice, check_float, check_int


@dataclasses.dataclass
class HeadSamples:
    """An IoU head's predictions and true values on its rows of a store.

    Attributes:
        predictions: ``(n,)`` the head's outputs.
        targets: ``(n,)`` the true IoUs.
        image_ids: ``(n,)`` index of each row's image (shared by all heads of one read).
    """

    predictions: np.ndarray
    targets: np.ndarray
    image_ids: np.ndarray


def iou_head_names(heads: UncertaintyHeads) -> list[str]:
    """The IoU heads among the loaded heads, in their order."""
    return [name for name in heads.names if HEADS[name].kind is HeadKind.IOU]


def iou_head_samples(
    store: str | os.PathLike[str] | StoreReader,
    heads: UncertaintyHeads,
    names: Sequence[str] | None = None,
    *,
    strict: bool = True,
) -> tuple[dict[str, HeadSamples], int]:
    """Run IoU heads on their rows of a store (see the module) and pair their outputs with their targets.

    Args:
        store: A token store or a reader of one.
        heads: The heads.
        names: IoU heads to read (default: every IoU head among ``heads``).
        strict: Raise if one of ``names`` has no rows with a target; otherwise leave it out.

    Returns:
        Per head with rows, its samples; and the number of images of the rows read.

    Raises:
        InvalidInputError: If a head is not loaded or not an IoU head, none has rows, or (``strict``) one has none.
        StoreError: If the store cannot be read.
    """
    wanted = list(iou_head_names(heads) if names is None else names)
    for name in wanted:
        if name not in heads.names or HEADS[name].kind is not HeadKind.IOU:
            raise InvalidInputError(f"{name!r} is not an IoU head of these heads; their IoU heads are "
                                    f"{iou_head_names(heads)}")  # fmt: skip
    if not wanted:
        raise InvalidInputError(f"the heads {heads.names} include no IoU head; only IoU heads can be calibrated")
    pooled = size_targets_of(heads.metadata.training) is SizeTargets.POOLED
    # Every head's rows in one read: the feature rows are shared, so reading the others costs nothing extra.
    data = load_training_data(
        store, None, pairing=heads.metadata.pairing, inputs=heads.metadata.inputs, pool_sizes=pooled,
        signal_normalization=heads.metadata.signal_normalization,
    )  # fmt: skip
    found = [name for name in wanted if name in data.heads]
    missing = [name for name in wanted if name not in found]
    if missing and (strict or not found):
        raise InvalidInputError(
            f"the store has no rows with a target for IoU head(s) {missing} (no model of their size, or the target "
            "column is absent or null); calibrate the others (usam calibrate --only HEAD ...)"
        )
    rows = np.unique(np.concatenate([data.heads[name].rows for name in found]))
    outputs = run_heads(heads.select(found), np.asarray(data.features[rows]))
    samples = {}
    for index, name in enumerate(found):
        head_rows = data.heads[name]
        positions = np.searchsorted(rows, head_rows.rows)
        samples[name] = HeadSamples(
            predictions=outputs[index, positions],
            targets=head_rows.targets.astype(np.float64),
            image_ids=data.image_ids[head_rows.rows],
        )
    return samples, int(data.image_keys.size)


def fit_calibration(
    store: str | os.PathLike[str] | StoreReader,
    heads: UncertaintyHeads,
    names: Sequence[str] | None = None,
    *,
    fit_fraction: float = DEFAULT_FIT_FRACTION,
    seed: int = 0,
    min_bin_rows: int = DEFAULT_MIN_BIN_ROWS,
    max_bins: int = DEFAULT_MAX_BINS,
    map_kind: MapKind | str = MapKind.AUTO,
    folds: int = DEFAULT_MAP_FOLDS,
) -> HeadsCalibration:
    """Fit the calibration map and conformal quantiles of IoU heads on a calibration store.

    Args:
        store: The calibration store (rows of another split than the heads' training data).
        heads: The heads to calibrate.
        names: IoU heads to calibrate (default: all of them; each must have rows in the store).
        fit_fraction: Share of the store's images whose rows fit the bound's map; the others give the residuals
            (the calibration map fits all rows).
        seed: Seed of the split of the images and of the cross-validation's folds.
        min_bin_rows: Fewest residuals of a Mondrian bin.
        max_bins: Most Mondrian bins.
        map_kind: Kind of the maps (``identity``, ``affine``, ``isotonic``), or ``auto``: per head and map the kind
            with the least out-of-fold squared error over ``folds`` folds of images
            (:func:`usam.calibration.select_map`).
        folds: Folds of that cross-validation.

    Returns:
        The calibration; store it with :func:`calibrate_heads_file` or in ``heads.metadata.calibration``.

    Raises:
        InvalidInputError: See :func:`iou_head_samples`; or too few rows or images to split.
        StoreError: If the store cannot be read.
    """
    fit_fraction = check_float(fit_fraction, "fit_fraction", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    if fit_fraction >= 1.0:
        raise InvalidInputError(f"fit_fraction must be less than 1 (the rest gives the bound), got {fit_fraction}")
    seed = check_int(seed, "seed", minimum=0)
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    samples, num_images = iou_head_samples(reader, heads, names, strict=True)
    if num_images < 2:
        raise InvalidInputError(f"the store {reader.root} has {num_images} image(s); calibration needs two or more")
    # Whole images on either side: rows of one image are alike, and the residuals must come from unseen images.
    order = np.random.default_rng(seed).permutation(num_images)
    fit_images = np.zeros(num_images, dtype=bool)
    fit_images[order[: min(max(round(fit_fraction * num_images), 1), num_images - 1)]] = True
    calibrated = {}
    rows = {}
    for name, sample in samples.items():
        in_fit = fit_images[sample.image_ids]
        try:
            calibrated[name] = HeadCalibration.fit(
                sample.predictions[in_fit], sample.targets[in_fit],
                sample.predictions[~in_fit], sample.targets[~in_fit],
                min_bin_rows=min_bin_rows, max_bins=max_bins, map_kind=map_kind,
                fit_groups=sample.image_ids[in_fit], conformal_groups=sample.image_ids[~in_fit], folds=folds,
                seed=seed,
            )  # fmt: skip
        except InvalidInputError as error:
            raise InvalidInputError(f"head {name}: {error}") from None
        rows[name] = {"fit": int(in_fit.sum()), "conformal": int((~in_fit).sum())}
    source = {
        "store": str(reader.root),
        "images": num_images,
        "fit_fraction": fit_fraction,
        "seed": seed,
        "rows": rows,
        "min_bin_rows": min_bin_rows,
        "max_bins": max_bins,
        "map": str(check_choice(MapKind, map_kind, "map kind")),
        "map_folds": folds,
        "pool_sizes": size_targets_of(heads.metadata.training) is SizeTargets.POOLED,
        "rows_are": "each IoU head's training rows (best of the three outputs) with its own target",
    }
    return HeadsCalibration(calibrated, source=source)


def calibrate_heads_file(
    store: str | os.PathLike[str],
    heads_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    **options: Any,
) -> tuple[Path, HeadsCalibration]:
    """Calibrate the IoU heads of a heads file on a store and write a copy of it with the calibration.

    The weights are copied unchanged; an earlier calibration in the file is replaced.

    Args:
        store: The calibration store.
        heads_path: Heads file or the authors' heads folder.
        out_path: The heads file to write (not one of the inputs).
        names: IoU heads to calibrate (default: all).
        **options: Passed to :func:`fit_calibration` (``fit_fraction``, ``seed``, ``min_bin_rows``, ``max_bins``,
            ``map_kind``, ``folds``).

    Returns:
        The written path and the calibration.
    """
    out = check_output_path(out_path, [store, heads_path])
    heads = load_heads(heads_path)
    calibration = fit_calibration(store, heads, names, **options)
    heads.metadata.calibration = calibration.to_json()
    return heads.save(out), calibration


@dataclasses.dataclass
class HeadCheck:
    """One IoU head's calibration measured on held-out rows.

    Attributes:
        rows: Rows with a target.
        ece_before: ECE of the head's raw output.
        ece_after: ECE of the calibrated output, or None if the head is not calibrated.
        ece_change_interval: 95 % bootstrap interval of ``ece_after - ece_before`` over the rows' images
            (:func:`usam.calibration.ece_change_samples`): a change whose interval holds 0 is within the noise of
            measuring the ECE on these rows. None if not calibrated.
        coverage: Per bound kind, per α, the share of rows with ``true ≥ iou_lower`` (calibrated heads only).
        mean_margin: Per bound kind, per α, the mean of ``calibrated - iou_lower``: how loose the bound is.
        reliability_before: Mean prediction, mean truth and rows per equal-mass bin, raw output.
        reliability_after: The same for the calibrated output, or None.
    """

    rows: int
    ece_before: float
    ece_after: float | None
    coverage: dict[str, dict[str, float]]
    mean_margin: dict[str, dict[str, float]]
    reliability_before: dict[str, list[float]]
    reliability_after: dict[str, list[float]] | None
    ece_change_interval: list[float] | None = None
    ece_change_samples: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    """The bootstrap samples behind the interval (kept in memory to pool runs; not in the JSON)."""

    def to_json(self) -> dict[str, Any]:
        """JSON data (non-finite numbers as null; without the bootstrap samples)."""
        data = dataclasses.asdict(dataclasses.replace(self, ece_change_samples=None))
        del data["ece_change_samples"]
        return _finite_or_null(data)


@dataclasses.dataclass
class CalibrationCheck:
    """Calibration of every IoU head on the evaluated store's rows (``usam evaluate``).

    Attributes:
        heads: Per IoU head with rows in the store, its measurements.
        calibrated: Whether the heads file holds a calibration.
        calibration_store: The store the calibration was fitted on, if recorded.
        alphas: The miscoverage levels of the coverage table.
        ece_bins: Equal-mass bins of the ECE.
        ece_resamples: Bootstrap resamples (of images) behind each head's ``ece_change_interval``.
        left_out: IoU heads without rows in the store.
        plot: File name of the reliability diagram, once written.
    """

    heads: dict[str, HeadCheck]
    calibrated: bool
    calibration_store: str | None
    alphas: tuple[float, ...] = EVALUATION_ALPHAS
    ece_bins: int = ECE_BINS
    ece_resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES
    left_out: list[str] = dataclasses.field(default_factory=list)
    plot: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON data for ``results.json``."""
        return {
            "calibrated": self.calibrated,
            "calibration_store": self.calibration_store,
            "alphas": list(self.alphas),
            "ece": f"expected calibration error over {self.ece_bins} equal-mass bins of the prediction",
            "ece_change": f"after - before; 95 % percentile interval over {self.ece_resamples} bootstrap resamples "
            "of the rows' images, both ECEs on each resample",
            "guarantee": "marginal: P(true IoU >= iou_lower) >= 1 - alpha over rows like the calibration rows",
            "heads": {name: entry.to_json() for name, entry in self.heads.items()},
            "left_out": list(self.left_out),
            "plot": self.plot,
        }


def check_calibration(
    store: str | os.PathLike[str] | StoreReader,
    heads: UncertaintyHeads,
    *,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> CalibrationCheck | None:
    """ECE before and after calibration and coverage of the bounds of every IoU head on a store's rows.

    Args:
        store: A token store (or its reader) of rows the calibration did not see.
        heads: The heads, calibrated or not.
        resamples: Bootstrap resamples of the images behind the interval of the ECE's change.
        seed: Seed of those resamples (one seed pairs the intervals of several heads files on one store).

    Returns:
        The measurements, or None if the heads have no IoU head or none has rows in the store.
    """
    names = iou_head_names(heads)
    if not names:
        return None
    try:
        with warnings.catch_warnings():
            # Rows with non-finite tokens or targets are the evaluation's to report (it names them per measure).
            warnings.simplefilter("ignore", TrainingWarning)
            samples, _ = iou_head_samples(store, heads, names, strict=False)
    except InvalidInputError:
        return None
    calibration = heads.calibration
    checks = {}
    for name, sample in samples.items():
        predictions, targets = sample.predictions, sample.targets
        head = calibration.heads.get(name) if calibration is not None else None
        coverage: dict[str, dict[str, float]] = {}
        margin: dict[str, dict[str, float]] = {}
        after, ece_after, changes, change_interval = None, None, None, None
        if head is not None:
            calibrated = head.calibrate(predictions)
            after = _curve(calibrated, targets)
            ece_after = expected_calibration_error(calibrated, targets)
            changes = ece_change_samples(
                predictions, calibrated, targets, sample.image_ids, resamples=resamples, seed=seed
            )
            change_interval = [float(bound) for bound in percentile_interval(changes)]
            for bound in BoundKind:
                lowers = {alpha: head.lower_bound(predictions, alpha, bound) for alpha in EVALUATION_ALPHAS}
                coverage[str(bound)] = {str(a): empirical_coverage(low, targets) for a, low in lowers.items()}
                margin[str(bound)] = {str(a): float(np.mean(calibrated - low)) for a, low in lowers.items()}
        checks[name] = HeadCheck(
            rows=int(targets.size),
            ece_before=expected_calibration_error(predictions, targets),
            ece_after=ece_after,
            coverage=coverage,
            mean_margin=margin,
            reliability_before=_curve(predictions, targets),
            reliability_after=after,
            ece_change_interval=change_interval,
            ece_change_samples=changes,
        )
    source_store = calibration.source.get("store") if calibration is not None else None
    return CalibrationCheck(
        heads=checks,
        calibrated=calibration is not None,
        calibration_store=source_store if isinstance(source_store, str) else None,
        ece_resamples=resamples,
        left_out=[name for name in names if name not in samples],
    )


def _curve(predictions: np.ndarray, targets: np.ndarray) -> dict[str, list[float]]:
    mean_predicted, mean_true, counts = reliability_curve(predictions, targets)
    return {"predicted": mean_predicted.tolist(), "true": mean_true.tolist(), "rows": counts.tolist()}


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
