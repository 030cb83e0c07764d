"""What can rank objects for correction: heads, differences of heads, SAM's score, entropies, random, oracle.

A measure's ranking direction and its heads come from :data:`usam.head_table.HEADS`: a gap head ranks the highest
values first, an IoU head the lowest; the IoU head that predicts a column of a given SAM2 size is found by the
heads' target columns and model sizes, never by the heads' names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from usam.extraction.targets import best_output
from usam.head_table import HEADS, SIZE_TARGETS_KEY, HeadKind, SizeTargets, size_targets_of
from usam.heads import InputsVariant
from usam.metrics import CorrectionScenario
from usam.validation import StrEnum


class MeasureKind(StrEnum):
    """Where a measure's values come from."""

    USAM_HEAD = "usam_head"
    """One head's output."""
    USAM_HEAD_DIFFERENCE = "usam_head_difference"
    """The difference of two IoU heads: predicted corrected IoU minus predicted base IoU."""
    SAM_SCORE = "sam_score"
    """SAM's own score of the evaluated mask."""
    ENTROPY = "entropy"
    """A Monte Carlo entropy column of the store."""
    RANDOM = "random"
    """Random order (mean of seeded orders)."""
    ORACLE = "oracle"
    """The true gain."""


class ColourRole(StrEnum):
    """How a measure is drawn in the plots (entropies are drawn by their column)."""

    PRIMARY_HEAD = "primary_head"
    IOU_HEAD = "iou_head"
    HEAD_DIFFERENCE = "head_difference"
    SAM_SCORE = "sam_score"


ENTROPY_MEASURES: tuple[str, ...] = ("h_std", "h_all", "h_theta", "h_task", "h_prompt", "h_augmentation")
"""Entropy columns evaluated as measures, in the order of the report."""

ENTROPY_LABELS: dict[str, str] = {
    "h_std": "Entropy H_std",
    "h_all": "Entropy H_all",
    "h_theta": "Entropy H_θ (model)",
    "h_task": "Entropy H_task",
    "h_prompt": "Entropy H_prompt",
    "h_augmentation": "Entropy H_aug",
}
"""Name of each entropy measure in the report and the plots."""

SCENARIO_GAP_HEADS: dict[str, str] = {
    "model_selection": "model_gap",
    "prompt_refinement": "prompt_gap",
    "task_supervision": "task_gap",
}
"""The gap head that predicts each scenario's gain (segmentation uncertainty has none: its size head ranks)."""

# SAM's pick, not the best output, is the base of task supervision: its score and entropies are SAM's pick's.
_SAM_PICK_SCENARIOS = frozenset({"task_supervision"})
# h_task describes all three outputs: it has no SAM's-pick variant.
_ENTROPIES_WITHOUT_SAM_PICK = frozenset({"h_task"})


@dataclasses.dataclass(frozen=True)
class Measure:
    """One way of ranking objects.

    Attributes:
        key: Identifier in ``results.json``, the same in every scenario (e.g. ``"h_std"``, ``"model_gap"``,
            ``"iou_large-iou_tiny"``).
        label: Name in the report and the plots.
        kind: Where the values come from.
        higher_is_uncertain: Whether the highest values are corrected first.
        source: The column or head(s) the values come from, as written in the report.
        colour_role: Plot colour: a :class:`ColourRole` or an entropy column.
        heads: The head (one) or the minuend and subtrahend heads (two) of a head measure.
        column: The store column of an entropy measure.
        sam_pick: Whether SAM's score is the highest score (SAM's pick) rather than the best output's.
    """

    key: str
    label: str
    kind: MeasureKind
    higher_is_uncertain: bool
    source: str
    colour_role: str
    heads: tuple[str, ...] = ()
    column: str | None = None
    sam_pick: bool = False


def iou_head_of(column: str, model_size: str | None) -> str | None:
    """The IoU head whose target is ``column`` (of the model of ``model_size`` for size heads), if any.

    Example:
        >>> iou_head_of("iou", "base-plus"), iou_head_of("unsupervised_iou", "tiny"), iou_head_of("h_std", None)
        ('iou_base_plus', 'iou_unsupervised', None)
    """
    for name, spec in HEADS.items():
        if spec.kind is HeadKind.IOU and spec.target_column == column and spec.model_size in (None, model_size):
            return name
    return None


def _inputs_note(inputs: str) -> str:
    """How a head measure names what its heads read: nothing for the paper's tokens, else the inputs variant."""
    return "" if inputs == InputsVariant.TOKENS else f" [{inputs}]"


def head_measure(name: str, colour_role: ColourRole, inputs: str = InputsVariant.TOKENS) -> Measure:
    """A measure that ranks by one head's output, in the head's own direction.

    ``inputs`` (what the heads file reads, :class:`usam.heads.InputsVariant`) is named in the label and source of
    heads that read more than the paper's tokens, so that each inputs variant reads as its own measure.
    """
    return Measure(
        key=name,
        label=f"USAM {name}{_inputs_note(inputs)}",
        kind=MeasureKind.USAM_HEAD,
        higher_is_uncertain=HEADS[name].higher_is_uncertain,
        source=f"head {name} on {inputs}",
        colour_role=colour_role,
        heads=(name,),
    )


def head_difference_measure(corrected_head: str, base_head: str, inputs: str = InputsVariant.TOKENS) -> Measure:
    """Predicted corrected IoU minus predicted base IoU: a second estimate of the gain, highest first."""
    return Measure(
        key=f"{corrected_head}-{base_head}",
        label=f"USAM {corrected_head} − {base_head}{_inputs_note(inputs)}",
        kind=MeasureKind.USAM_HEAD_DIFFERENCE,
        higher_is_uncertain=True,
        source=f"head {corrected_head} minus head {base_head}",
        colour_role=ColourRole.HEAD_DIFFERENCE,
        heads=(corrected_head, base_head),
    )


def scenario_measures(
    scenario: CorrectionScenario,
    base_size: str | None,
    corrected_size: str | None,
    inputs: str = InputsVariant.TOKENS,
) -> list[Measure]:
    """The measures of a scenario, in the order of the report.

    Args:
        scenario: The correction scenario.
        base_size: SAM2 size of the model whose rows give the base IoU (and every measure's values).
        corrected_size: SAM2 size of the model whose rows give the corrected IoU (the base size when the same row
            gives both).
        inputs: What the heads read (an :class:`usam.heads.InputsVariant`), named in the head measures.

    Returns:
        The primary head (the scenario's gap head, or for segmentation uncertainty the base size's IoU head), the
        IoU head of the base, the difference of the IoU heads of the corrected and the base value, SAM's score and
        the entropies.
    """
    base_head = iou_head_of(scenario.base_column, base_size)
    corrected_head = iou_head_of(scenario.corrected, corrected_size) if isinstance(scenario.corrected, str) else None
    measures: list[Measure] = []
    gap_head = SCENARIO_GAP_HEADS.get(scenario.name)
    if gap_head is not None:
        measures.append(head_measure(gap_head, ColourRole.PRIMARY_HEAD, inputs))
        if base_head is not None:
            measures.append(head_measure(base_head, ColourRole.IOU_HEAD, inputs))
    elif base_head is not None:
        measures.append(head_measure(base_head, ColourRole.PRIMARY_HEAD, inputs))
    if base_head is not None and corrected_head is not None and corrected_head != base_head:
        measures.append(head_difference_measure(corrected_head, base_head, inputs))
    sam_pick = scenario.name in _SAM_PICK_SCENARIOS
    score_source = "highest of sam_scores (SAM's pick)" if sam_pick else "sam_scores of the best output"
    measures.append(
        Measure("sam_score", "SAM score", MeasureKind.SAM_SCORE, False, score_source, ColourRole.SAM_SCORE,
                sam_pick=sam_pick)
    )  # fmt: skip
    for name in ENTROPY_MEASURES:
        column = f"{name}_sam_pick" if sam_pick and name not in _ENTROPIES_WITHOUT_SAM_PICK else name
        measures.append(
            Measure(name, ENTROPY_LABELS[name], MeasureKind.ENTROPY, True, f"column {column}", name, column=column)
        )
    return measures


def sam_score_of_best_output(sam_scores: np.ndarray, mask_ious: np.ndarray) -> np.ndarray:
    """SAM's score of the best of the three outputs, per row (``(N, 3)`` arrays in, ``(N,)`` out)."""
    return sam_scores[np.arange(len(sam_scores)), best_output(mask_ious)]


def measure_values(
    measure: Measure,
    indices: np.ndarray,
    *,
    columns: Mapping[str, np.ndarray],
    sam_scores: np.ndarray,
    mask_ious: np.ndarray,
    head_values: Mapping[str, np.ndarray],
) -> np.ndarray | None:
    """A measure's values on some rows (NaN where undefined), or None if its heads or column are missing.

    Args:
        measure: The measure (not random or the oracle).
        indices: Rows to read.
        columns: Store columns, ``(N,)`` each.
        sam_scores: ``(N, 3)`` SAM's scores of the three outputs.
        mask_ious: ``(N, 3)`` IoU of the three outputs with the truth.
        head_values: Per head, ``(N,)`` outputs.
    """
    if measure.kind in (MeasureKind.USAM_HEAD, MeasureKind.USAM_HEAD_DIFFERENCE):
        if any(name not in head_values for name in measure.heads):
            return None
        values = head_values[measure.heads[0]][indices]
        return values - head_values[measure.heads[1]][indices] if len(measure.heads) == 2 else values
    if measure.kind is MeasureKind.SAM_SCORE:
        scores = sam_scores[indices]
        if measure.sam_pick:
            return np.max(np.where(np.isnan(scores), -np.inf, scores), axis=1)
        return sam_score_of_best_output(scores, mask_ious[indices])
    if measure.kind is MeasureKind.ENTROPY:
        return columns[measure.column][indices] if measure.column in columns else None
    raise ValueError(f"{measure.kind} has no values per row")


def off_distribution_note(measure: Measure, rows_size: str | None, training: Mapping[str, object]) -> str | None:
    """Why a head measure reads tokens its heads were not trained on, or None when it does not.

    An ``iou_<size>`` head run on another size's rows (``iou_large`` on the tiny rows of model selection) only predicts
    what it should if it was trained on every row with that size's IoU (``training["size_targets"] ==
    "per-size-pooled"``); heads trained on their own size's rows see other tokens here.

    Args:
        measure: A measure.
        rows_size: SAM2 size of the rows the measure is computed on.
        training: The heads' training record (:attr:`usam.heads.HeadsMetadata.training`).
    """
    if size_targets_of(training) is SizeTargets.POOLED:
        return None
    foreign = [name for name in measure.heads if HEADS[name].model_size not in (None, rows_size)]
    if not foreign:
        return None
    return (
        f"off-distribution: {' and '.join(foreign)} reads the {rows_size} model's tokens here, but the heads file "
        f"does not record size heads trained on every row ({SIZE_TARGETS_KEY} = {SizeTargets.POOLED.value!r}), so "
        "it was trained on its own size's rows only"
    )
