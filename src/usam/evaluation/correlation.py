"""The paper's Table 5: Pearson correlation of the true IoU and gaps, SAM's score, the entropies and the heads.

The correlation itself is :func:`usam.metrics.pearson_matrix`, the one Pearson implementation of usam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from usam.evaluation.measures import ENTROPY_LABELS, ENTROPY_MEASURES, sam_score_of_best_output
from usam.evaluation.rows import GAP_COLUMNS, Rows
from usam.evaluation.scenarios import finite_or_none
from usam.metrics import pearson_matrix

# A column null for more than this fraction of the rows is left out rather than thinning the rows.
MAX_NULL_FRACTION = 0.5


@dataclasses.dataclass
class CorrelationResult:
    """A Pearson correlation matrix and what went into it.

    Attributes:
        names: Keys of the correlated values (``true_iou``, ``sam_score``, ``h_std``, ``head_iou_tiny``, ...).
        labels: Their names in the report.
        matrix: ``(K, K)`` correlations; NaN where undefined (a constant column).
        num_rows: Rows on which every kept value is defined (the rows correlated).
        rows_with_nulls_dropped: Rows dropped because a kept value is null on them.
        left_out: Values left out, with the reason.
        model: The model whose rows are correlated.
        plot: File name of the heat map, once written.
    """

    names: list[str]
    labels: list[str]
    matrix: np.ndarray
    num_rows: int
    rows_with_nulls_dropped: int
    left_out: dict[str, str]
    model: str = ""
    plot: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data (non-finite numbers as null)."""
        data: dict[str, Any] = {
            "names": list(self.names),
            "labels": list(self.labels),
            "matrix": [[finite_or_none(value) for value in row] for row in self.matrix.tolist()],
            "num_rows": self.num_rows,
            "rows_with_nulls_dropped": self.rows_with_nulls_dropped,
            "left_out": dict(self.left_out),
        }
        if self.plot is not None:
            data["plot"] = self.plot
        return data


def correlation_table(rows: Rows, model: str, head_names: Sequence[str]) -> CorrelationResult:
    """Pearson matrix of true IoU and gaps, SAM's score, entropies and heads on the rows of ``model`` (Table 5).

    A value null on more than half of the rows is left out; the others are correlated on the rows where all of
    them are defined.
    """
    indices = rows.indices_of(model)
    candidates: dict[str, tuple[str, np.ndarray]] = {
        "true_iou": ("True IoU", rows.values["iou"][indices]),
        "sam_score": ("SAM score", sam_score_of_best_output(rows.sam_scores[indices], rows.mask_ious[indices])),
    }
    for name in ENTROPY_MEASURES:
        if name in rows.values:
            candidates[name] = (ENTROPY_LABELS[name].removeprefix("Entropy "), rows.values[name][indices])
    for name in GAP_COLUMNS:
        candidates[f"true_{name}"] = (f"True {name}", rows.values[name][indices])
    for name in head_names:
        candidates[f"head_{name}"] = (f"USAM {name}", rows.head_values[name][indices])

    left_out: dict[str, str] = {}
    kept = {}
    for key, (label, values) in candidates.items():
        null_fraction = float(np.mean(np.isnan(values))) if values.size else 1.0
        if null_fraction == 1.0:
            left_out[key] = "null for every row"
        elif null_fraction > MAX_NULL_FRACTION:
            left_out[key] = f"null for {null_fraction:.0%} of the rows"
        else:
            kept[key] = (label, values)
    complete = np.ones(indices.size, dtype=bool)
    for _, values in kept.values():
        complete &= np.isfinite(values)
    names, matrix = pearson_matrix({key: values[complete] for key, (_, values) in kept.items()})
    return CorrelationResult(
        names=names,
        labels=[kept[key][0] for key in names],
        matrix=matrix,
        num_rows=int(complete.sum()),
        rows_with_nulls_dropped=int((~complete).sum()),
        left_out=left_out,
        model=model,
    )
