"""The figure of a tracked video: predicted IoU per frame and object, its drops, and an overlay strip of frames."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from usam.video import VideoFrameResult
from usam.video_outputs import SAM_IOU, object_series

OBJECT_COLOURS = ("#1e78ff", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""One colour per object (cycled), in the plot and the overlays."""

STRIP_HEIGHT = 220
"""Pixel height the strip's frames are drawn at (masks are sampled, never kept at full size)."""


def strip_frames(frames: Sequence[int], worst: Sequence[int], count: int) -> list[int]:
    """About ``count`` frames to show: evenly spaced over the video, with the worst frames swapped in.

    Example:
        >>> strip_frames(range(10), [4], 3)
        [0, 4, 9]
    """
    frames = sorted(frames)
    if count <= 0 or not frames:
        return []
    spaced = [frames[round(index)] for index in np.linspace(0, len(frames) - 1, min(count, len(frames)))]
    for frame in worst:
        if frame not in spaced and spaced:
            nearest = min(range(len(spaced)), key=lambda index: abs(spaced[index] - frame))
            if spaced[nearest] not in worst:  # keep the first, last and other worst frames when possible
                spaced[nearest] = frame
    return sorted(set(spaced))


def render_video(
    results: Sequence[VideoFrameResult],
    path: str | os.PathLike[str],
    *,
    estimate: str,
    load_frame: Callable[[int], np.ndarray | None],
    threshold: float | None = None,
    drop: float = 0.1,
    strip: int = 5,
    title: str | None = None,
    footnote: str | None = None,
) -> Path:
    """Write a PNG: the predicted IoU per frame and object over time, drops marked, and an overlay strip.

    Args:
        results: One result per tracked frame.
        path: Output PNG (written atomically).
        estimate: What the plot follows: a head name or ``sam_iou`` (SAM2's own IoU is drawn dashed alongside).
        load_frame: Frame index -> H x W x 3 uint8 image, or None to draw the masks on grey.
        threshold: A predicted IoU below which frames are marked "re-prompt here".
        drop: Falls of more than this from one frame to the next are marked.
        strip: How many frames the overlay strip shows.
        title: Figure title.
        footnote: A line under the figure (e.g. that the weights are random).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from usam.visualize import finish_figure

    series = object_series(results)
    by_frame = {result.frame_index: result for result in results}
    worst = []
    for item in series:
        values = item.values[estimate]
        if np.isfinite(values).any():
            worst.append(int(item.frames[np.nanargmin(values)]))
    shown = strip_frames(list(by_frame), worst, strip)
    figure = plt.figure(figsize=(max(10.0, 2.6 * len(shown)), 7.4))
    grid = figure.add_gridspec(2, max(1, len(shown)), height_ratios=[1.25, 1.0], hspace=0.32, wspace=0.05)
    plot = figure.add_subplot(grid[0, :])
    label = "SAM2's IoU prediction" if estimate == SAM_IOU else f"predicted IoU ({estimate})"
    for index, item in enumerate(series):
        colour = OBJECT_COLOURS[index % len(OBJECT_COLOURS)]
        values = item.values[estimate]
        plot.plot(item.frames, values, "-", color=colour, linewidth=2.0, label=f"object {item.object_id}")
        if estimate != SAM_IOU:
            plot.plot(item.frames, item.values[SAM_IOU], "--", color=colour, linewidth=1.0, alpha=0.6)
        prompted = item.prompted & np.isfinite(values)
        plot.scatter(
            item.frames[prompted], values[prompted], marker="D", s=46, color=colour, edgecolors="black", zorder=3
        )
        drops = item.drops(estimate, drop)
        drop_values = values[np.isin(item.frames, drops)]
        plot.scatter(drops, drop_values, marker="v", s=90, color="#d00000", edgecolors="white", zorder=4)
        if threshold is not None:
            below = item.below(estimate, threshold)
            below_values = values[np.isin(item.frames, below)]
            ring = {"marker": "o", "s": 140, "facecolors": "none", "edgecolors": "#d00000", "linewidths": 1.5}
            plot.scatter(below, below_values, zorder=4, **ring)
    if threshold is not None:
        plot.axhline(threshold, color="#d00000", linestyle=":", linewidth=1.2)
        plot.text(plot.get_xlim()[0], threshold, f" re-prompt below {threshold:g}", color="#d00000", va="bottom")
    plot.set_xlabel("frame")
    plot.xaxis.set_major_locator(MaxNLocator(integer=True))
    plot.set_ylabel(label)
    plot.set_ylim(-0.02, 1.02)
    plot.grid(alpha=0.3)
    _legend(plot, estimate, threshold)
    for column, frame in enumerate(shown):
        axis = figure.add_subplot(grid[1, column])
        _draw_overlay(axis, by_frame[frame], load_frame(frame), series, estimate)
        if frame in worst:
            for spine in axis.spines.values():
                spine.set_edgecolor("#d00000")
                spine.set_linewidth(2.5)
    return finish_figure(figure, path, title=title, footnote=footnote)


def _legend(plot, estimate: str, threshold: float | None) -> None:
    from matplotlib.lines import Line2D

    handles, labels = plot.get_legend_handles_labels()
    extra = [
        (Line2D([], [], marker="D", linestyle="", color="grey", markeredgecolor="black"), "prompted frame"),
        (Line2D([], [], marker="v", linestyle="", color="#d00000"), "drop"),
    ]
    if estimate != SAM_IOU:
        extra.insert(0, (Line2D([], [], linestyle="--", color="grey"), "SAM2's own IoU prediction"))
    if threshold is not None:
        extra.append((Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="#d00000"), "re-prompt"))
    plot.legend(
        handles + [handle for handle, _ in extra],
        labels + [text for _, text in extra],
        loc="lower left",
        fontsize=9,
        ncol=4,
        framealpha=0.85,
    )


def _draw_overlay(axis, result: VideoFrameResult, image: np.ndarray | None, series, estimate: str) -> None:
    height, width = result.masks.shape[-2:]
    size = (STRIP_HEIGHT, max(1, round(width * STRIP_HEIGHT / height)))
    rows = ((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.intp)
    columns = ((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.intp)
    if image is not None:
        from PIL import Image

        axis.imshow(np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BOX)))
    else:
        axis.imshow(np.full((*size, 3), 128, np.uint8))
    words = []
    for row, obj_id in enumerate(result.object_ids):
        index = next(position for position, item in enumerate(series) if item.object_id == obj_id)
        colour = OBJECT_COLOURS[index % len(OBJECT_COLOURS)]
        mask = result.masks[row][np.ix_(rows, columns)]
        tint = np.zeros((*size, 4), np.float32)
        tint[mask] = (*_rgb(colour), 0.45)
        axis.imshow(tint)
        if mask.any():
            axis.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
        value = result.sam_iou[row] if estimate == SAM_IOU else result.uncertainty[estimate][row]
        words.append(f"{obj_id}: {value:.2f}" if np.isfinite(value) else f"{obj_id}: -")
    axis.set_title(f"frame {result.frame_index}\n" + "  ".join(words), fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[position : position + 2], 16) / 255 for position in (1, 3, 5))  # type: ignore[return-value]
