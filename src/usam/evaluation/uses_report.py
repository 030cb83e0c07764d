"""The files of a uses evaluation: ``uses.json``, the table ``uses.md`` and the curves as PNGs."""

from __future__ import annotations

from pathlib import Path

from usam.evaluation.uses import FRACTIONS, ORACLE, RANDOM, Interval, UsesResult
from usam.files import atomic_path, write_json_atomically, write_text_atomically

USES_JSON, USES_MARKDOWN = "uses.json", "uses.md"
CASCADE_PLOT, PSEUDO_LABEL_PLOT = "uses_cascade.png", "uses_pseudo_labels.png"


def _cell(interval: Interval, digits: int = 1, scale: float = 1.0) -> str:
    if interval.value != interval.value:  # NaN
        return "n/a"
    return (
        f"{interval.value * scale:.{digits}f} [{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"
    )


def uses_markdown(result: UsesResult) -> str:
    """The table of the three uses, with 95 % bootstrap intervals."""
    lines = [
        "# Uses of usam's estimates",
        "",
        f"Small model `{result.small}`, large model `{result.large}`; {result.num_objects} objects "
        f"({result.dropped} left out: no large row or non-finite tokens). Brackets: 95 % percentile bootstrap "
        "interval over objects.",
        "",
        "## Model cascade (accuracy against the fraction escalated)",
        "",
        "Relative AUC of mean IoU over the fraction escalated: 0 % = never escalate, 100 % = the oracle.",
        "",
        "| measure | relative AUC (%) |",
        "|---|---|",
        *[f"| {name} | {_cell(value)} |" for name, value in result.cascade_relative_auc.items()],
        *[f"| {name} | skipped: {cause} |" for name, cause in result.cascade_skipped.items()],
        "",
        "## The right mask (task ambiguity)",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {name.replace('_', ' ')} | {_cell(value, 3)} |" for name, value in result.mask_choice.items()],
        "",
        "## Pseudo-label filter (precision against the fraction kept)",
        "",
        "Relative area of precision over the fraction kept: 0 % = random, 100 % = the oracle (SAM's pick kept in "
        "every row but usam_own_pick, which keeps usam's pick).",
        "",
        "| measure | " + " | ".join(result.pseudo_label_relative_area) + " |",
        "|---|" + "---|" * len(result.pseudo_label_relative_area),
    ]
    measures = next(iter(result.pseudo_label_relative_area.values()), {})
    for name in measures:
        cells = [_cell(table[name]) for table in result.pseudo_label_relative_area.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if result.notes:
        lines += ["", "Notes:", *[f"- {note}" for note in result.notes]]
    return "\n".join(lines) + "\n"


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)


def write_uses_report(result: UsesResult, out: str | Path) -> list[str]:
    """Write ``uses.json``, ``uses.md`` and the cascade and pseudo-label curves into ``out``; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(result.to_json(), out / USES_JSON)
    write_text_atomically(out / USES_MARKDOWN, uses_markdown(result))
    styles = {RANDOM: {"color": "grey", "linestyle": "--"}, ORACLE: {"color": "black", "linestyle": ":"}}

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for name, values in result.cascade_curves.items():
        if name == "none":
            continue
        auc = result.cascade_relative_auc.get(name)
        label = name if auc is None else f"{name} ({auc.value:.1f} %)"
        axes.plot(FRACTIONS, values, label=label, **styles.get(name, {}))
    axes.set(xlabel="fraction of objects escalated (cost)", ylabel="mean IoU", title="Model cascade")
    axes.legend(fontsize=8)
    _save(figure, out / CASCADE_PLOT)

    figure, panels = plt.subplots(1, len(result.pseudo_label_curves), figsize=(11, 4.5), squeeze=False)
    for axes, (key, curves) in zip(panels[0], result.pseudo_label_curves.items(), strict=True):
        for name, values in curves.items():
            area = result.pseudo_label_relative_area[key].get(name)
            label = name if area is None else f"{name} ({area.value:.1f} %)"
            axes.plot(FRACTIONS, values, label=label, **styles.get(name, {}))
        axes.set(xlabel="fraction of masks kept", ylabel=f"precision ({key.replace('iou', 'true IoU ')})")
        axes.set_title(f"Pseudo-labels, {key}")
        axes.legend(fontsize=8)
    _save(figure, out / PSEUDO_LABEL_PLOT)
    return [USES_JSON, USES_MARKDOWN, CASCADE_PLOT, PSEUDO_LABEL_PLOT]
