"""Plots of an evaluation: correction curves, the correlation heat map, the token ablation, the reliability diagram.

Each ``plot_*`` function draws on a matplotlib ``Axes`` it is given and returns that axes' figure, so that paper
figures can combine several panels; :func:`write_plots` makes one figure per plot and saves it as a PNG.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from usam.calibration import ECE_BINS
from usam.evaluation.ablation import AblationResult
from usam.evaluation.correlation import CorrelationResult
from usam.evaluation.measures import ColourRole
from usam.evaluation.reliability import CalibrationCheck
from usam.evaluation.scenarios import AUC_RANGES, RANGE_LABELS, SCENARIO_TITLES, ScenarioResult, Status
from usam.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from usam.evaluation.run import EvaluationResult

PLOT_DPI = 200
"""Resolution of the written PNGs."""

PLOT_PREFIXES: tuple[str, ...] = ("curves_", "correlation", "ablation", "reliability")
"""Every PNG the evaluation writes starts with one of these (see :func:`plot_file_names`)."""

_COLOURS = {
    "primary_head": "#d62728",
    "iou_head": "#ff7f0e",
    "head_difference": "#8c564b",
    "sam_score": "#1f77b4",
    "h_std": "#2ca02c",
    "h_all": "#9467bd",
    "h_theta": "#17becf",
    "h_task": "#bcbd22",
    "h_prompt": "#e377c2",
    "h_augmentation": "#393b79",
    "random": "#7f7f7f",
    "oracle": "#000000",
    "no_correction": "#b0b0b0",
}
PLOT_STYLE: dict[str, Any] = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
"""matplotlib settings of the written plots (``matplotlib.pyplot.rc_context(PLOT_STYLE)``)."""

_ABLATION_BARS = (
    ("iou_token", "IoU token only", "#9ecae1", None),
    ("mask_token", "Mask token only", "#4292c6", None),
    ("both", "Both tokens", "#08306b", None),
    ("signals", "Signals only", "#a1d99b", None),
    ("tokens+signals", "Tokens + signals", "#238b45", None),
    ("provided_heads", "Provided heads", "#d62728", "//"),
    ("sam_score", "SAM score", "#fdae6b", None),
    ("random", "Random", "#bdbdbd", None),
)


def format_percent(value: float | None) -> str:
    """A relative AUC as written in reports and legends (``n/a`` where undefined)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def plot_scenario(ax: Axes, result: ScenarioResult) -> Figure:
    """Draw a scenario's correction curves (every measure, random, oracle, no correction) on ``ax``.

    Args:
        ax: The axes to draw on.
        result: A scenario that was evaluated.

    Returns:
        The figure of ``ax``.
    """
    fractions = np.asarray(result.fractions) * 100.0
    ax.plot(fractions, result.no_correction, color=_COLOURS["no_correction"], lw=1.2, label="No correction")
    for measure in result.measures.values():
        aucs = measure.relative_auc_percent
        label = f"{measure.label}: {format_percent(aucs['r_0_1'])} | {format_percent(aucs['r_0_0.5'])}"
        if measure.num_objects != result.num_objects:
            label += f"  (on {measure.num_objects} of {result.num_objects} objects)"
        style: dict[str, Any] = {"color": _COLOURS.get(measure.colour_role, "#444444"), "lw": 1.6}
        if measure.key == "oracle":
            style |= {"ls": "--", "lw": 2.0}
        elif measure.key == "random":
            style |= {"ls": ":", "lw": 2.2}
        elif measure.colour_role == ColourRole.PRIMARY_HEAD:
            style |= {"lw": 2.6, "zorder": 5}
        elif measure.colour_role in (ColourRole.IOU_HEAD, ColourRole.HEAD_DIFFERENCE):
            style |= {"ls": "-."}
        ax.plot(fractions, measure.mean_iou, label=label, **style)
    # Marks where the second relative-AUC range, r in [0, 0.5], ends.
    ax.axvline(50.0, color="#c8c8c8", lw=1.0, ls=(0, (4, 3)), zorder=0)
    ax.text(50.8, 0.02, "r = 0.5", transform=ax.get_xaxis_transform(), color="#909090", fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("Objects corrected, most uncertain first (%)")
    ax.set_ylabel("Mean IoU over all objects")
    ax.set_title(f"{result.title} — {result.base_model}, {result.num_objects} objects")
    ax.grid(True, color="#ececec", lw=0.8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="Relative AUC (%): r ≤ 1 | r ≤ 0.5", title_fontsize=9.5)  # fmt: skip
    return ax.figure


def plot_correlation(ax: Axes, result: CorrelationResult) -> Figure:
    """Draw a correlation matrix as an annotated heat map with a colour bar on ``ax``; returns its figure."""
    matrix = np.asarray(result.matrix, dtype=np.float64)
    count = len(result.labels)
    import matplotlib

    colour_map = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#e8e8e8")
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colour_map, vmin=-1.0, vmax=1.0)
    font_size = 9 if count <= 12 else 7
    for row in range(count):
        for column in range(count):
            value = matrix[row, column]
            text = "–" if not math.isfinite(value) else f"{value:.2f}"
            colour = "white" if math.isfinite(value) and abs(value) > 0.6 else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=font_size, color=colour)
    ax.set_xticks(range(count), result.labels, rotation=45, ha="right")
    ax.set_yticks(range(count), result.labels)
    ax.set_title(f"Pearson correlation — {result.model}, {result.num_rows} objects")
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("Pearson r")
    return ax.figure


def plot_ablation(ax: Axes, result: AblationResult, range_key: str = "r_0_1") -> Figure:
    """Draw the ablation's relative AUC over one range of :data:`AUC_RANGES` as grouped bars on ``ax``.

    Returns:
        The figure of ``ax``.
    """
    scenarios = [name for name, entry in result.scenarios.items() if entry.status is Status.DONE]
    present = [bar for bar in _ABLATION_BARS if any(bar[0] in result.scenarios[name].scores for name in scenarios)]
    width = 0.8 / max(len(present), 1)
    positions = np.arange(len(scenarios))
    for offset, (key, label, colour, hatch) in enumerate(present):
        heights = []
        for name in scenarios:
            score = result.scenarios[name].scores.get(key)
            heights.append(np.nan if score is None else score.relative_auc_percent[range_key])
        shift = (offset - (len(present) - 1) / 2) * width
        ax.bar(positions + shift, heights, width, label=label, color=colour, hatch=hatch,
               edgecolor="white" if hatch is None else "#7f0000", linewidth=0.6)  # fmt: skip
    ax.axhline(0.0, color="#505050", lw=0.8)
    ax.axhline(100.0, color="#000000", lw=1.0, ls="--")
    # "Segmentation uncertainty" -> "Segmentation\nuncertainty": horizontal labels that fit under the bars.
    ax.set_xticks(positions, [SCENARIO_TITLES[name].split(" (")[0].replace(" ", "\n") for name in scenarios])
    ax.set_title(f"Relative AUC, {RANGE_LABELS[range_key]}")
    ax.grid(True, axis="y", color="#ececec", lw=0.8)
    return ax.figure


def plot_reliability(ax: Axes, check: CalibrationCheck, head: str) -> Figure:
    """Draw one IoU head's reliability diagram on ``ax``: mean true IoU against mean prediction per equal-mass bin.

    The raw output is dashed, the calibrated one solid; the diagonal is perfect calibration.

    Returns:
        The figure of ``ax``.
    """
    entry = check.heads[head]
    ax.plot([0, 1], [0, 1], color=_COLOURS["no_correction"], lw=1.0, ls="--", label="perfect")
    curves = [("raw", entry.reliability_before, entry.ece_before, ":", _COLOURS["iou_head"])]
    if entry.reliability_after is not None:
        curves.append(("calibrated", entry.reliability_after, entry.ece_after, "-", _COLOURS["primary_head"]))
    for label, curve, ece, style, colour in curves:
        ece_text = "n/a" if ece is None or not math.isfinite(ece) else f"{ece:.3f}"
        ax.plot(curve["predicted"], curve["true"], ls=style, marker="o", ms=3.5, lw=1.6, color=colour,
                label=f"{label}: ECE {ece_text}")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Predicted IoU (bin mean)")
    ax.set_ylabel("True IoU (bin mean)")
    ax.set_title(f"{head} ({entry.rows} rows)")
    ax.grid(True, color="#ececec", lw=0.8)
    ax.legend(loc="upper left", frameon=False)
    return ax.figure


def plot_file_names(result: EvaluationResult) -> dict[str, str]:
    """The PNG of each plot of an evaluation: scenario name, ``correlation``, ``ablation``, ``reliability`` -> file."""
    names = {
        entry.name: f"curves_{entry.name}.png" for entry in result.scenarios.values() if entry.status is Status.DONE
    }
    if result.correlation.names:
        names["correlation"] = "correlation.png"
    if result.ablation is not None and result.ablation.status is Status.DONE:
        names["ablation"] = "ablation.png"
    if result.calibration is not None and result.calibration.calibrated:
        names["reliability"] = "reliability.png"
    return names


def write_plots(result: EvaluationResult, out_dir: Path) -> list[str]:
    """Save every plot of an evaluation as a PNG in ``out_dir`` (atomically) and record the file names in it.

    Returns:
        The names of the written files.
    """
    plt = _pyplot()
    written = []
    for key, name in plot_file_names(result).items():
        with (
            plt.rc_context(_style_of(key)),
            _drawn_figure(plt, key, result) as figure,
            atomic_path(out_dir / name) as temporary,
        ):
            figure.savefig(temporary, dpi=PLOT_DPI, bbox_inches="tight", format="png")
        if key == "correlation":
            result.correlation.plot = name
        elif key == "ablation":
            result.ablation.plot = name
        elif key == "reliability":
            result.calibration.plot = name
        else:
            result.scenarios[key].plot = name
        written.append(name)
    return written


def _style_of(key: str) -> dict[str, Any]:
    # The heat map is framed on every side.
    return PLOT_STYLE | {"axes.spines.top": True, "axes.spines.right": True} if key == "correlation" else PLOT_STYLE


@contextlib.contextmanager
def _drawn_figure(plt: Any, key: str, result: EvaluationResult) -> Iterator[Figure]:
    """The finished figure of one plot of :func:`plot_file_names`; closed afterwards."""
    if key == "correlation":
        side = max(6.0, 0.55 * len(result.correlation.labels) + 2.5)
        figure, ax = plt.subplots(figsize=(side + 1.2, side))
        plot_correlation(ax, result.correlation)
        figure.tight_layout()
    elif key == "ablation":
        figure, axes = plt.subplots(1, len(AUC_RANGES), figsize=(6.2 * len(AUC_RANGES), 5.0), sharey=True)
        axes = np.atleast_1d(axes)
        for ax, range_key in zip(axes, AUC_RANGES, strict=True):
            plot_ablation(ax, result.ablation, range_key)
        axes[0].set_ylabel("Relative AUC (%)  (oracle = 100, dashed)")
        handles, labels = axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=max(len(labels), 1), frameon=False,
                      bbox_to_anchor=(0.5, -0.01))  # fmt: skip
        protocol = result.ablation.protocol
        figure.suptitle(
            f"Inputs ablation — {result.model}: heads trained on {protocol['train_images']} images, "
            f"scored on {protocol['test_images']} held-out images"
        )
        figure.tight_layout(rect=(0, 0.07, 1, 1))
    elif key == "reliability":
        names = list(result.calibration.heads)
        columns = min(len(names), 3)
        rows = math.ceil(len(names) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.6 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            plot_reliability(ax, result.calibration, name)
        for ax in list(axes.flat)[len(names) :]:
            ax.set_visible(False)
        figure.suptitle(f"Reliability of the IoU heads — {result.model} store rows, {ECE_BINS} equal-mass bins")
        figure.tight_layout()
    else:
        figure, ax = plt.subplots(figsize=(10.5, 5.8))
        plot_scenario(ax, result.scenarios[key])
        figure.tight_layout()
    try:
        yield figure
    finally:
        plt.close(figure)


def remove_earlier_plots(out_dir: Path, earlier: Sequence[str]) -> list[str]:
    """Remove the PNGs an earlier evaluation wrote into ``out_dir`` (listed in its results.json), and only those.

    Args:
        out_dir: The report folder.
        earlier: File names the earlier run recorded; anything that is not a plain ``.png`` file name starting with
            one of :data:`PLOT_PREFIXES` is left alone.

    Returns:
        The removed names.
    """
    removed = []
    for name in _plain_plot_names(earlier):
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def _plain_plot_names(names: Sequence[str]) -> Iterator[str]:
    for name in names:
        if (
            isinstance(name, str)
            and name == Path(name).name
            and name.endswith(".png")
            and name.startswith(PLOT_PREFIXES)
        ):
            yield name


def _pyplot() -> Any:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # a user's pyplot keeps its backend (switching closes figures)
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
