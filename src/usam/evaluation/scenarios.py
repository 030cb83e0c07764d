"""The four correction scenarios on a store's rows: which objects, their curves, and each measure's relative AUC.

*Model selection* joins the tiny model's row of an object (base IoU ``iou``, and every measure) with the large
model's row (corrected IoU ``iou``); objects lacking either row are dropped and counted. The other three scenarios
use the evaluated model's rows alone. A measure whose values are null for every object is skipped with the cause
(heads missing from the heads file, non-finite tokens, a column the extraction did not fill); one that is null for
some objects is scored on the objects where it is defined, against no-correction and oracle curves of those
objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from usam.evaluation.measures import Measure, MeasureKind, measure_values
from usam.evaluation.rows import Rows
from usam.metrics import (
    CorrectionScenario,
    Curve,
    area_weights,
    corrected_counts,
    correction_curve,
    no_correction_curve,
    oracle_curve,
    random_curve,
    ranked_mean_iou,
    relative_area,
)
from usam.metrics import relative_auc as relative_auc_of
from usam.validation import StrEnum

AUC_RANGES: dict[str, float] = {"r_0_1": 1.0, "r_0_0.5": 0.5}
"""Key of each relative-AUC column and the largest fraction corrected that it integrates over."""

RANGE_LABELS: dict[str, str] = {"r_0_1": "r ∈ [0, 1]", "r_0_0.5": "r ∈ [0, 0.5]"}
"""How each relative-AUC range is written in reports and plots."""

SCENARIO_TITLES: dict[str, str] = {
    "model_selection": "Model selection (tiny → large)",
    "prompt_refinement": "Prompt refinement (center click → dense prompt)",
    "task_supervision": "Task supervision (SAM's pick → best of three)",
    "segmentation_uncertainty": "Segmentation uncertainty (→ perfect mask)",
}
"""Title of each scenario in reports and plots."""


class Status(StrEnum):
    """Whether a part of the evaluation was done."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None for NaN and infinity (JSON has neither)."""
    return None if value is None or not np.isfinite(value) else float(value)


def json_ready(value: Any) -> Any:
    """A copy of free-form data with NaN and infinity as None and numpy values as Python ones (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(float(value))
    return value


def curve_json(values: np.ndarray | None) -> list[float | None] | None:
    """A curve's values as a JSON list (non-finite values as null)."""
    return None if values is None else [finite_or_none(value) for value in np.asarray(values).tolist()]


@dataclasses.dataclass
class MeasureResult:
    """How well one measure ranks the objects of one scenario.

    Attributes:
        key: The measure's key (see :class:`~usam.evaluation.measures.Measure`).
        label: Its name in the report.
        kind: Where its values come from.
        ranks_first: Which objects it corrects first, in words.
        source: The column or head(s) its values come from.
        num_objects: Objects it is defined on (and scored on).
        relative_auc_percent: Relative AUC per range of :data:`AUC_RANGES`, in percent.
        mean_iou: Its correction curve's mean IoU at the evaluation's fractions, or None (ablation scores).
        colour_role: Plot colour of the measure.
        note: A caveat the report prints next to the measure, or None.
    """

    key: str
    label: str
    kind: MeasureKind
    ranks_first: str
    source: str
    num_objects: int
    relative_auc_percent: dict[str, float]
    mean_iou: np.ndarray | None = None
    colour_role: str = ""
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data (non-finite numbers as null)."""
        data: dict[str, Any] = {
            "label": self.label,
            "kind": str(self.kind),
            "ranks_first": self.ranks_first,
            "source": self.source,
            "num_objects": self.num_objects,
            "relative_auc_percent": {key: finite_or_none(value) for key, value in self.relative_auc_percent.items()},
        }
        if self.mean_iou is not None:
            data["mean_iou"] = curve_json(self.mean_iou)
        if self.note is not None:
            data["note"] = self.note
        return data


@dataclasses.dataclass
class ScenarioResult:
    """One correction scenario: its objects, curves and every measure's score, or why it was skipped.

    Attributes:
        name: The scenario (see :data:`usam.metrics.CORRECTION_SCENARIOS`).
        status: Done or skipped.
        title: Title in the report.
        description: What correcting an object means.
        reason: Why it was skipped, or None.
        base_model, base_column: Rows and column of the base IoU.
        corrected_model: Model whose rows give the corrected IoU.
        corrected_value: Column of the corrected IoU, or the constant corrected IoU.
        counts: Rows and objects used and dropped.
        fractions: Fractions of objects corrected at which the curves are evaluated.
        mean_base_iou, mean_corrected_iou: Mean IoU over the objects before and after correcting all of them.
        no_correction: Mean IoU of correcting nothing, at every fraction.
        measures: Each scored measure's result, random and the oracle last.
        skipped_measures: Each skipped measure's key and the reason.
        plot: File name of the scenario's plot, once written.
    """

    name: str
    status: Status
    title: str
    description: str
    reason: str | None = None
    base_model: str | None = None
    base_column: str | None = None
    corrected_model: str | None = None
    corrected_value: str | float | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    fractions: np.ndarray | None = None
    mean_base_iou: float = float("nan")
    mean_corrected_iou: float = float("nan")
    no_correction: np.ndarray | None = None
    measures: dict[str, MeasureResult] = dataclasses.field(default_factory=dict)
    skipped_measures: dict[str, str] = dataclasses.field(default_factory=dict)
    plot: str | None = None

    @property
    def num_objects(self) -> int:
        """Objects of the scenario."""
        return self.counts.get("objects", 0)

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data (non-finite numbers as null)."""
        data: dict[str, Any] = {
            "status": str(self.status),
            "title": self.title,
            "description": self.description,
        }
        if self.status is not Status.DONE:
            return {**data, "reason": self.reason}
        data |= {
            "base": {"model": self.base_model, "column": self.base_column},
            "corrected": {"model": self.corrected_model, "value": self.corrected_value},
            "counts": dict(self.counts),
            "num_objects": self.num_objects,
            "mean_base_iou": finite_or_none(self.mean_base_iou),
            "mean_corrected_iou": finite_or_none(self.mean_corrected_iou),
            "no_correction": {"mean_iou": curve_json(self.no_correction)},
            "measures": {key: result.to_json() for key, result in self.measures.items()},
            "skipped_measures": dict(self.skipped_measures),
        }
        if self.plot is not None:
            data["plot"] = self.plot
        return data


@dataclasses.dataclass
class ScenarioObjects:
    """The objects of one scenario: their base row, base and corrected IoU, and what was dropped."""

    base_rows: np.ndarray
    base_iou: np.ndarray
    corrected_iou: np.ndarray
    counts: dict[str, int]


def skipped_scenario(scenario: CorrectionScenario, reason: str) -> ScenarioResult:
    """The result of a scenario that could not be evaluated."""
    return ScenarioResult(scenario.name, Status.SKIPPED, SCENARIO_TITLES[scenario.name], scenario.description, reason)


def scenario_objects(
    rows: Rows, scenario: CorrectionScenario, base_model: str, corrected_model: str | None
) -> ScenarioObjects:
    """The objects of a scenario: base rows of ``base_model``, corrected values from the same or a joined row."""
    base_rows = rows.indices_of(base_model)
    counts = {"base_rows": int(base_rows.size)}
    base_iou = rows.values[scenario.base_column][base_rows]
    if isinstance(scenario.corrected, str):
        if corrected_model is None:
            corrected_iou = rows.values[scenario.corrected][base_rows]
        else:
            corrected_rows = rows.indices_of(corrected_model)
            position = {key: index for index, key in zip(corrected_rows, rows.object_keys(corrected_rows), strict=True)}
            base_keys = rows.object_keys(base_rows)
            partner = np.array([position.get(key, -1) for key in base_keys], dtype=np.int64)
            counts["corrected_rows"] = int(corrected_rows.size)
            counts["objects_without_corrected_row"] = int(np.count_nonzero(partner < 0))
            counts["objects_without_base_row"] = len(set(position) - set(base_keys))
            joined = partner >= 0
            base_rows, base_iou, partner = base_rows[joined], base_iou[joined], partner[joined]
            corrected_iou = rows.values[scenario.corrected][partner]
    else:
        corrected_iou = np.full(base_rows.size, float(scenario.corrected))
    usable = np.isfinite(base_iou) & np.isfinite(corrected_iou)
    counts["objects_with_missing_iou"] = int(np.count_nonzero(~usable))
    counts["objects"] = int(np.count_nonzero(usable))
    return ScenarioObjects(base_rows[usable], base_iou[usable], corrected_iou[usable], counts)


def relative_aucs(curve: Curve, none: Curve, oracle: Curve) -> dict[str, float]:
    """Relative AUC of ``curve`` over every range of :data:`AUC_RANGES`."""
    return {key: relative_auc_of(curve, none, oracle, max_fraction=limit) for key, limit in AUC_RANGES.items()}


def range_weights(fractions: np.ndarray) -> np.ndarray:
    """Area weights of every range of :data:`AUC_RANGES` on a grid (:func:`usam.metrics.area_weights`).

    Returns:
        Array of shape (ranges, points).
    """
    return np.stack([area_weights(fractions, max_fraction=limit) for limit in AUC_RANGES.values()])


def relative_aucs_of_rankings(
    base: np.ndarray,
    corrected: np.ndarray,
    rankings: list[tuple[np.ndarray, bool]],
    fractions: np.ndarray,
    weights: np.ndarray | None = None,
    references: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Relative AUCs of several rankings of the same objects, sharing the work (:func:`ranking_scores` scores one).

    The no-correction and oracle areas are computed once for all rankings that are defined on every object; a
    ranking with NaN values is scored on its defined objects against their own references. Used where many
    measures are scored on many resamples (the test-bed's bootstrap).

    Args:
        base: (N,) base IoUs.
        corrected: (N,) corrected IoUs.
        rankings: ``(values, higher_is_uncertain)`` per ranking, values of shape (N,).
        fractions: The curves' grid.
        weights: :func:`range_weights` of ``fractions`` (computed here when not given).
        references: The no-correction and oracle areas of all N objects (``weights @ curve``), when the caller
            has them already; computed here otherwise.

    Returns:
        Array of shape (rankings, ranges) in the order of :data:`AUC_RANGES`.
    """
    weights = range_weights(fractions) if weights is None else weights
    shared = references
    base, corrected = np.asarray(base, dtype=np.float64), np.asarray(corrected, dtype=np.float64)
    all_counts = corrected_counts(fractions, len(base))
    result = np.empty((len(rankings), weights.shape[0]))
    for index, (values, higher) in enumerate(rankings):
        values = np.asarray(values, dtype=np.float64)
        defined = ~np.isnan(values)
        if defined.all():
            scored_base, scored_corrected, scored_values = base, corrected, values
        else:
            scored_base, scored_corrected, scored_values = base[defined], corrected[defined], values[defined]
        if not scored_base.size:
            result[index] = np.nan
            continue
        if defined.all() and shared is not None:
            none_areas, oracle_areas = shared
        else:
            # The checked curves validate the IoUs (a caller passing references checked them itself), so the
            # rankings below skip the checks.
            none_areas = weights @ no_correction_curve(scored_base, fractions=fractions).mean_iou
            oracle_areas = weights @ oracle_curve(scored_base, scored_corrected, fractions=fractions).mean_iou
            if defined.all():
                shared = none_areas, oracle_areas
        counts = all_counts if defined.all() else corrected_counts(fractions, scored_base.size)
        mean_iou = ranked_mean_iou(scored_base, scored_corrected, scored_values, counts, higher)
        result[index] = relative_area(weights @ mean_iou, none_areas, oracle_areas)
    return result


def ranking_scores(
    base: np.ndarray, corrected: np.ndarray, values: np.ndarray, higher: bool, fractions: np.ndarray
) -> tuple[int, dict[str, float], np.ndarray]:
    """Objects scored, relative AUCs and curve of ranking by ``values``; objects where they are NaN are left out."""
    aucs = relative_aucs_of_rankings(base, corrected, [(values, higher)], fractions)[0]
    defined = ~np.isnan(values)
    curve = correction_curve(
        base[defined], corrected[defined], values[defined], fractions=fractions, higher_is_uncertain=higher
    )
    return int(defined.sum()), {key: float(value) for key, value in zip(AUC_RANGES, aucs, strict=True)}, curve.mean_iou


def ranks_first(measure: Measure) -> str:
    """Which objects a measure corrects first, in words."""
    return "highest values" if measure.higher_is_uncertain else "lowest values"


def values_of(measure: Measure, rows: Rows, indices: np.ndarray) -> np.ndarray | None:
    """A measure's values on some rows of ``rows`` (see :func:`~usam.evaluation.measures.measure_values`)."""
    return measure_values(
        measure,
        indices,
        columns=rows.values,
        sam_scores=rows.sam_scores,
        mask_ious=rows.mask_ious,
        head_values=rows.head_values,
    )


def undefined_reason(measure: Measure, rows: Rows, indices: np.ndarray, store_metadata: Mapping[str, Any]) -> str:
    """Why a measure has no value on any of some rows: missing heads or column, non-finite tokens, null column."""
    if measure.kind in (MeasureKind.USAM_HEAD, MeasureKind.USAM_HEAD_DIFFERENCE):
        missing = [name for name in measure.heads if name not in rows.head_values]
        if missing:
            return f"head {' and '.join(missing)} is not in the heads file"
        nonfinite = int(np.count_nonzero(rows.nonfinite_tokens[indices]))
        if nonfinite:
            return (
                f"{nonfinite} of the {indices.size} rows have non-finite tokens (NaN or infinity), which the heads "
                "cannot read; re-extract those images into a new store"
            )
        return "the heads give no finite value on any object"
    if measure.kind is MeasureKind.SAM_SCORE:
        return "SAM's scores are null for every object"
    if measure.column not in rows.values:
        return f"the store has no column {measure.column}"
    if store_metadata.get("monte_carlo") is False:
        return (
            f"{measure.column} is null for every object: the store was extracted without the Monte Carlo "
            "entropies (usam extract --no-monte-carlo); extract without that option to evaluate them"
        )
    return f"{measure.column} is null for every object (the extraction did not compute it)"


def partly_undefined_note(measure: Measure, rows: Rows, indices: np.ndarray) -> str | None:
    """A note for a head measure that some objects' non-finite tokens leave undefined, or None."""
    if measure.kind not in (MeasureKind.USAM_HEAD, MeasureKind.USAM_HEAD_DIFFERENCE):
        return None
    nonfinite = int(np.count_nonzero(rows.nonfinite_tokens[indices]))
    if not nonfinite:
        return None
    return f"{nonfinite} of the {indices.size} objects have non-finite tokens and are left out"


def evaluate_scenario(
    scenario: CorrectionScenario,
    objects: ScenarioObjects,
    measures: list[Measure],
    rows: Rows,
    models: tuple[str, str | None],
    fractions: np.ndarray,
    seeds: int,
    *,
    notes: Mapping[str, str] | None = None,
    store_metadata: Mapping[str, Any] | None = None,
) -> ScenarioResult:
    """Score every measure of a scenario on its objects, with random order and the oracle.

    Args:
        scenario: The scenario.
        objects: Its objects (see :func:`scenario_objects`).
        measures: Its measures.
        rows: The store's rows.
        models: The base model and the corrected model (None: the base model's own rows).
        fractions: Fractions of objects corrected at which curves are evaluated.
        seeds: Random orders averaged for the random baseline.
        notes: Caveats per measure key, printed with the measure.
        store_metadata: The store's metadata, to name why a column is empty.
    """
    base_model, corrected_model = models
    base, corrected = objects.base_iou, objects.corrected_iou
    none = no_correction_curve(base, fractions=fractions)
    oracle = oracle_curve(base, corrected, fractions=fractions)
    results: dict[str, MeasureResult] = {}
    skipped: dict[str, str] = {}
    for measure in measures:
        values = values_of(measure, rows, objects.base_rows)
        if values is None or np.all(np.isnan(values)):
            skipped[measure.key] = undefined_reason(measure, rows, objects.base_rows, store_metadata or {})
            continue
        num_objects, aucs, mean_iou = ranking_scores(base, corrected, values, measure.higher_is_uncertain, fractions)
        caveats = [(notes or {}).get(measure.key), partly_undefined_note(measure, rows, objects.base_rows)]
        results[measure.key] = MeasureResult(
            measure.key, measure.label, measure.kind, ranks_first(measure), measure.source, num_objects, aucs,
            mean_iou, measure.colour_role, "; ".join(note for note in caveats if note) or None,
        )  # fmt: skip
    random = random_curve(base, corrected, num_seeds=seeds, fractions=fractions)
    results["random"] = MeasureResult(
        "random", f"Random ({seeds} seeds)", MeasureKind.RANDOM, "random", f"mean of {seeds} seeded random orders",
        int(base.size), relative_aucs(random, none, oracle), random.mean_iou, "random",
    )  # fmt: skip
    results["oracle"] = MeasureResult(
        "oracle", "Oracle", MeasureKind.ORACLE, "largest true gain", "corrected IoU minus base IoU", int(base.size),
        relative_aucs(oracle, none, oracle), oracle.mean_iou, "oracle",
    )  # fmt: skip
    return ScenarioResult(
        name=scenario.name,
        status=Status.DONE,
        title=SCENARIO_TITLES[scenario.name],
        description=scenario.description,
        base_model=base_model,
        base_column=scenario.base_column,
        corrected_model=corrected_model or base_model,
        corrected_value=scenario.corrected,
        counts=objects.counts,
        fractions=fractions,
        mean_base_iou=float(base.mean()),
        mean_corrected_iou=float(corrected.mean()),
        no_correction=none.mean_iou,
        measures=results,
        skipped_measures=skipped,
    )
