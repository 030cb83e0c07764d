"""``report.md``: an evaluation's numbers, plots and caveats as Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from usam.evaluation.plots import format_percent
from usam.evaluation.scenarios import ScenarioResult, Status

if TYPE_CHECKING:
    from usam.evaluation.ablation import AblationResult
    from usam.evaluation.correlation import CorrelationResult
    from usam.evaluation.reliability import CalibrationCheck, HeadCheck
    from usam.evaluation.run import EvaluationResult

_ABLATION_COLUMNS = (
    "iou_token",
    "mask_token",
    "both",
    "signals",
    "tokens+signals",
    "provided_heads",
    "sam_score",
    "random",
)


def report_markdown(result: EvaluationResult) -> str:
    """The Markdown report of an evaluation (plots are referenced by the file names recorded in ``result``)."""
    heads = result.heads_metadata
    lines = [
        f"# UncertainSAM evaluation: {result.model}",
        "",
        f"- Store: `{result.store}` ("
        + ", ".join(f"{count} rows of {name}" for name, count in result.num_rows.items())
        + ")",
        f"- Heads: `{result.heads}`: {', '.join(heads['names'])}; pairing `{heads['pairing']}`, "
        f"inputs {' + '.join(heads['inputs'])}, trained for {heads['sam2_version'] or 'an unknown SAM2 version'}",
        f"- usam {result.usam_version}, preset `{result.preset}`; random baseline averaged over {result.seeds} seeds",
        "",
    ]
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- **{note}**" for note in result.warnings] + [""]
    lines += [
        "## How to read this",
        "",
        "Objects are ranked from most to least uncertain by a measure; the first fraction *r* of them is "
        "corrected, and the curves show the mean IoU over all objects against *r*. **Relative AUC** = "
        "100 · (AUC − AUC_none) / (AUC_oracle − AUC_none), in percent: 0 is no correction, 100 the oracle "
        "(which corrects in order of the true gain). Column **r ∈ [0, 1]** integrates over every fraction "
        "corrected; column **r ∈ [0, 0.5]** only up to half of the objects, the regime where a ranking is "
        "useful in practice. Random ranking is listed for reference; it does not score 0.",
        "",
        "The evaluated mask is the best of SAM2's three outputs (its IoU is column `iou`); SAM's score and the "
        "entropies are those of that mask, except in task supervision, whose base is SAM's own pick (highest "
        "score) and whose entropies are the `*_sam_pick` columns. The heads read the best output's mask token "
        f"(pairing `{heads['pairing']}`), as in training. *Ranks first*: highest or lowest values corrected first.",
        "",
        "## Correction scenarios",
        "",
    ]
    for entry in result.scenarios.values():
        lines += _scenario_lines(entry)
    lines += _correlation_lines(result.correlation, result.model)
    lines += _calibration_lines(result.calibration)
    lines += _ablation_lines(result.ablation, result)
    lines += _departure_lines(result)
    lines += ["All numbers, including every curve, are in `results.json`.", ""]
    return "\n".join(lines)


def _scenario_lines(entry: ScenarioResult) -> list[str]:
    lines = [f"### {entry.title}", "", entry.description, ""]
    if entry.status is not Status.DONE:
        return [*lines, f"Skipped: {entry.reason}.", ""]
    counts = entry.counts
    count_text = f"{entry.num_objects} objects of {entry.base_model}"
    if "objects_without_corrected_row" in counts:
        count_text += (
            f"; dropped: {counts['objects_without_corrected_row']} without a {entry.corrected_model} row, "
            f"{counts['objects_without_base_row']} without a {entry.base_model} row"
        )
    if counts["objects_with_missing_iou"]:
        count_text += f"; {counts['objects_with_missing_iou']} dropped for a missing IoU"
    corrected = entry.corrected_value
    corrected_text = f"`{corrected}`" if isinstance(corrected, str) else f"{corrected:g}"
    lines += [
        f"{count_text}. Base `{entry.base_column}` → corrected {corrected_text}: mean IoU "
        f"{entry.mean_base_iou:.4f} → {entry.mean_corrected_iou:.4f}.",
        "",
        "| Measure | Ranks first | Source | Rel. AUC r ∈ [0, 1] (%) | Rel. AUC r ∈ [0, 0.5] (%) | Objects |",
        "|---|---|---|---:|---:|---:|",
    ]
    notes = []
    for measure in entry.measures.values():
        aucs = measure.relative_auc_percent
        label = measure.label
        if measure.note:
            notes.append(measure.note)
            label += f" [{len(notes)}]"
        lines.append(
            f"| {label} | {measure.ranks_first} | {measure.source} | "
            f"{format_percent(aucs['r_0_1'])} | {format_percent(aucs['r_0_0.5'])} | {measure.num_objects} |"
        )
    lines.append("")
    if notes:
        lines += [f"[{number}] {note}." for number, note in enumerate(notes, 1)] + [""]
    if entry.skipped_measures:
        skipped = "; ".join(f"`{key}` ({reason})" for key, reason in entry.skipped_measures.items())
        lines += [f"Skipped measures: {skipped}.", ""]
    if entry.plot:
        lines += [f"![{entry.title}]({entry.plot})", ""]
    return lines


def _correlation_lines(correlation: CorrelationResult, model: str) -> list[str]:
    lines = [
        "## Pearson correlation (Table 5)",
        "",
        f"On the {correlation.num_rows} rows of {model} where every listed value is defined "
        f"({correlation.rows_with_nulls_dropped} rows with a null dropped). SAM score and entropies are those "
        "of the best output; *True* columns are the store's targets, *USAM* ones the heads' outputs.",
        "",
    ]
    if correlation.left_out:
        left_out = "; ".join(f"`{key}` ({reason})" for key, reason in correlation.left_out.items())
        lines += [f"Left out: {left_out}.", ""]
    if correlation.names:
        lines.append("| | " + " | ".join(correlation.labels) + " |")
        lines.append("|---|" + "---:|" * len(correlation.labels))
        for label, row in zip(correlation.labels, correlation.matrix.tolist(), strict=True):
            cells = ["–" if not math.isfinite(value) else f"{value:.2f}" for value in row]
            lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
        lines.append("")
        if correlation.plot:
            lines += [f"![Pearson correlation]({correlation.plot})", ""]
    return lines


def _calibration_lines(check: CalibrationCheck | None) -> list[str]:
    lines = ["## Calibration of the IoU heads", ""]
    if check is None:
        return [*lines, "No IoU head has rows with a target in this store.", ""]

    def number(value: float | None, digits: int = 4) -> str:
        return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

    lines += [
        "Each IoU head on the rows it learns from in training (the best of the three outputs, with its own target: "
        "`iou_<size>` on that size's rows, `iou_unsupervised` and `iou_dense_prompt` on every row). **ECE**: "
        f"expected calibration error over {check.ece_bins} equal-mass bins of the prediction, "
        "Σ (n_b / n) |mean prediction − mean true IoU|.",
        "",
    ]
    if check.calibrated:
        where = f" on `{check.calibration_store}`" if check.calibration_store else ""
        lines += [
            f"The heads file is calibrated (`usam calibrate`{where}). **Coverage**: the share of rows whose true "
            "IoU is at least the lower bound `iou_lower`; the bound promises ≥ 1 − α *marginally* (over rows like "
            "the calibration rows, not per mask). Each cell: marginal / Mondrian (per bin of the calibrated IoU) "
            "bound; in brackets the mean margin, calibrated − bound. These rows must not be the calibration rows. "
            "**ECE change**: calibrated − raw with its 95 % bootstrap interval over these rows' images "
            f"({check.ece_resamples} resamples); an interval that holds 0 is a change within the noise of the ECE.",
            "",
        ]
    else:
        lines += ["The heads file holds no calibration (`usam calibrate` adds one): raw ECE only.", ""]
    header = "| Head | Rows | ECE raw | ECE calibrated |"
    rule = "|---|---:|---:|---:|"
    if check.calibrated:
        header += " ECE change [95 %] |"
        rule += "---:|"
        header += "".join(f" Coverage α = {alpha:g} (target {1 - alpha:.0%}) |" for alpha in check.alphas)
        rule += "---:|" * len(check.alphas)
    lines += [header, rule]
    for name, entry in check.heads.items():
        row = f"| `{name}` | {entry.rows} | {number(entry.ece_before)} | {number(entry.ece_after)} |"
        if check.calibrated:
            row += f" {_ece_change(entry)} |"
            for alpha in check.alphas:
                if not entry.coverage:
                    row += " – |"
                    continue
                marginal, mondrian = entry.coverage["marginal"][str(alpha)], entry.coverage["mondrian"][str(alpha)]
                margins = entry.mean_margin["marginal"][str(alpha)], entry.mean_margin["mondrian"][str(alpha)]
                row += (
                    f" {number(100 * marginal, 1)} % / {number(100 * mondrian, 1)} % "
                    f"({number(margins[0], 3)} / {number(margins[1], 3)}) |"
                )
        lines.append(row)
    lines.append("")
    if check.left_out:
        lines += [f"No rows with a target here for: {', '.join(f'`{name}`' for name in check.left_out)}.", ""]
    if check.plot:
        lines += [f"![Reliability diagram]({check.plot})", ""]
    return lines


def _ece_change(entry: HeadCheck) -> str:
    change = None if entry.ece_after is None else entry.ece_after - entry.ece_before
    return format_ece_change(change, entry.ece_change_interval)


def format_ece_change(change: float | None, interval: Sequence[float | None] | None) -> str:
    """An ECE's change with its interval, ``+0.0012 [-0.0004, +0.0029]``, or a dash where a figure is missing.

    Example:
        >>> format_ece_change(-0.00214, (-0.0031, -0.0012))
        '-0.0021 [-0.0031, -0.0012]'
    """
    if change is None or interval is None or any(bound is None for bound in interval):
        return "–"
    low, high = interval
    return f"{change:+.4f} [{low:+.4f}, {high:+.4f}]"


def _ablation_lines(ablation: AblationResult | None, result: EvaluationResult) -> list[str]:
    lines = ["## Inputs ablation", ""]
    if ablation is None:
        return [*lines, "Not run (`ablation=False`).", ""]
    if ablation.status is not Status.DONE:
        return [*lines, f"Not done: {ablation.reason}.", ""]
    protocol = ablation.protocol
    lines += [
        f"The images of the store are split at random (seed {protocol['seed']}): "
        f"{protocol['train_images']} train the heads and {protocol['test_images']} "
        f"({protocol['test_fraction']:.0%}) score them; no image is on both sides. For each variant the "
        "heads of the four scenarios are trained from scratch with usam.training on the training images "
        f"({protocol['rows']}), keeping each head's epoch with the best loss on "
        f"{protocol['validation_fraction_of_training_images']:.0%} of the training images; hyper-parameters: "
        f"{protocol['hyper_parameter_source']}. Mask tokens are paired as `{protocol['pairing']}`. "
        "Scores are relative AUC (%) on the test images' objects; *Provided heads* are the evaluated heads "
        "file on the same objects (they may have been trained on them).",
        "",
        "| Scenario | Head | Test objects | IoU token only | Mask token only | Both tokens | Signals only "
        "| Tokens + signals | Provided heads | SAM score | Random |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in ablation.scenarios.items():
        title = result.scenarios[name].title
        if entry.status is not Status.DONE:
            lines.append(f"| {title} | – | – | " + " | ".join(["–"] * len(_ABLATION_COLUMNS)) + " |")
            continue
        cells = []
        for column in _ABLATION_COLUMNS:
            score = entry.scores.get(column)
            if score is None:
                cells.append("–")
                continue
            aucs = score.relative_auc_percent
            cells.append(f"{format_percent(aucs['r_0_1'])} / {format_percent(aucs['r_0_0.5'])}")
        lines.append(f"| {title} | `{entry.head}` | {entry.num_test_objects} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: relative AUC over r ∈ [0, 1] / over r ∈ [0, 0.5].", ""]
    skipped = {name: entry["reason"] for name, entry in ablation.variants.items() if "reason" in entry}
    lines += [f"Variant `{name}` not trained: {reason}." for name, reason in skipped.items()]
    lines += [""] if skipped else []
    if ablation.plot:
        lines += [f"![Inputs ablation]({ablation.plot})", ""]
    return lines


def _departure_lines(result: EvaluationResult) -> list[str]:
    lines = [
        "## Differences from the paper",
        "",
        "Every deliberate difference between usam and the paper authors' code, and what this run used (from the "
        "store's metadata, the heads file and the options). **Differs** marks the choices of this run that differ "
        "from the paper; `usam evaluate --preset paper` and `usam extract --preset paper` switch to the paper's "
        "choices where they can.",
        "",
    ]
    if result.store_choices:
        recorded = ", ".join(f"{label} `{value}`" for label, value in result.store_choices.items())
        lines += [f"The store records: {recorded}.", ""]
    else:
        lines += ["The store records none of its extraction choices (preset, tie rule, precision).", ""]
    lines += ["| Choice | Paper | usam default | This run | Differs | Why usam differs |", "|---|---|---|---|---|---|"]
    marks = {True: "**yes**", False: "no", None: "?"}
    for row in result.departures:
        lines.append(f"| {row.topic} | {row.paper} | {row.usam} | {row.this_run} | {marks[row.differs]} | {row.why} |")
    return [*lines, ""]
