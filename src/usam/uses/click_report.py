"""The report of a simulated-user run: ``clicks.json``, ``clicks.md`` (a paper-ready table) and ``clicks.png``.

The figure shows mean IoU against the number of clicks for every strategy, and the ask-only-when-needed curves (mean
IoU against clicks asked for) next to asking every object for the same number of clicks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usam.files import atomic_path, write_json_atomically, write_text_atomically
from usam.uses.next_click import ClickStrategy

REPORT_FORMAT = "usam-click-evaluation"
"""``format`` of ``clicks.json``."""

_DESCRIPTIONS = {
    ClickStrategy.UNCERTAIN_PIXEL: "most uncertain pixel of the answer",
    ClickStrategy.UNCERTAIN_REGION: "centre of the widest uncertain band",
    ClickStrategy.DISAGREEMENT: "centre of the region where SAM's 3 masks disagree",
    ClickStrategy.ERROR_REGION: "baseline, needs the truth: centre of the largest error (standard protocol)",
    ClickStrategy.RANDOM: "baseline: uniform random pixel",
}

_SHOWN_THRESHOLDS = (-0.05, 0.0, 0.02, 0.05, 0.1)


def _with_interval(entry: dict[str, Any], digits: int) -> str:
    low, high = entry["interval"]
    return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown page of a report (see :func:`write_click_report`)."""
    results = report["results"]
    options = report["options"]
    any_summary = next(iter(results.values()))
    miou_columns = list(any_summary["miou"])
    lines = [
        "# Next click: simulated user",
        "",
        f"{any_summary['objects']} objects, model `{report['context'].get('model', '')}`, heads "
        f"`{report['context'].get('heads', '')}`, data `{report['context'].get('data', '')}`; "
        f"{options['max_clicks']} clicks at most, seed {options['seed']}, first mask chosen by "
        f"{'usam' if options['mask_choice'] == 'heads' else 'SAM'}. Means with 95 % percentile-bootstrap intervals "
        f"over objects; NoC counts {options['max_clicks']} when the IoU is never reached.",
        "",
        "| strategy | NoC@85 | NoC@90 | " + " | ".join(f"mIoU@{clicks}" for clicks in miou_columns) + " |",
        "|---|---|---|" + "---|" * len(miou_columns),
    ]
    for name, summary in results.items():
        cells = [_with_interval(summary["noc"][key], 2) for key in ("85", "90")]
        cells += [_with_interval(summary["miou"][clicks], 3) for clicks in miou_columns]
        lines.append(f"| `{name}` ({_DESCRIPTIONS[ClickStrategy(name)]}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Ask only when needed",
        "",
        "Another click is asked for only while the predicted prompt gap of the answer exceeds τ; compare with asking",
        "every object for the same number of clicks (mIoU@k at k - 1 clicks asked for).",
        "",
        "| strategy | τ | clicks asked per object | objects asked | mIoU | mIoU, same clicks for all |",
        "|---|---|---|---|---|---|",
    ]
    for name, summary in results.items():
        curve = summary["miou_curve"]
        for point in summary["ask_when_needed"]:
            if not any(abs(point["threshold"] - shown) < 1e-9 for shown in _SHOWN_THRESHOLDS):
                continue
            lines.append(
                f"| `{name}` | {point['threshold']:+.2f} | {point['clicks_asked']:.2f} | {point['asked_share']:.0%} | "
                f"{point['miou']:.3f} | {_uniform_budget_miou(curve, point['clicks_asked']):.3f} |"
            )
    return "\n".join(lines) + "\n"


def _uniform_budget_miou(curve: list[float], clicks_asked: float) -> float:
    """Mean IoU when every object gets ``1 + clicks_asked`` clicks, interpolated between whole click counts."""
    import numpy as np

    return float(np.interp(clicks_asked, np.arange(len(curve)), curve))


def write_click_report(
    results: dict[str, Any], options: dict[str, Any], out: str | Path, context: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``clicks.json``, ``clicks.md`` and ``clicks.png`` into ``out`` (atomically).

    Args:
        results: :func:`usam.uses.simulated_user.summarize_runs` of the runs.
        options: :meth:`usam.uses.simulated_user.SimulationOptions.as_record`.
        out: Output folder (created if needed).
        context: Free description of the run (model, heads, data), recorded and shown.

    Returns:
        The paths written, by kind (``json``, ``markdown``, ``figure``).
    """
    out = Path(out)
    report = {"format": REPORT_FORMAT, "version": 1, "options": options, "context": context or {}, "results": results}
    paths = {"json": out / "clicks.json", "markdown": out / "clicks.md", "figure": out / "clicks.png"}
    write_json_atomically(report, paths["json"])
    write_text_atomically(paths["markdown"], markdown_report(report))
    _write_figure(results, paths["figure"])
    return paths


def _write_figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figure, (clicks_axis, gate_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, summary in results.items():
        curve = summary["miou_curve"]
        style = "--" if ClickStrategy(name) in (ClickStrategy.ERROR_REGION, ClickStrategy.RANDOM) else "-"
        (line,) = clicks_axis.plot(range(1, len(curve) + 1), curve, style, marker="o", markersize=3, label=name)
        gate = summary["ask_when_needed"]
        gate_axis.plot(
            [point["clicks_asked"] for point in gate], [point["miou"] for point in gate], "-", color=line.get_color()
        )
        budget = summary["gate_clicks"]
        gate_axis.plot(range(budget), curve[:budget], ":", color=line.get_color(), label=f"{name}, same for all")
    clicks_axis.set_xlabel("clicks")
    clicks_axis.set_ylabel("mean IoU")
    clicks_axis.set_title("mean IoU after k clicks")
    clicks_axis.legend(fontsize=8)
    gate_axis.set_xlabel("clicks asked for per object (beyond the first)")
    gate_axis.set_ylabel("mean IoU")
    gate_axis.set_title("ask only when the prompt gap exceeds τ (solid)")
    gate_axis.legend(fontsize=7)
    for axis in (clicks_axis, gate_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format="png")
    finally:
        plt.close(figure)
