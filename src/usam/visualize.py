"""Figures of a prediction: the image with the mask and prompts, the uncertainty map, and the estimates in words."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from usam.head_table import is_gap_head
from usam.predictor import UncertainPrediction

_HEAD_WORDS = {
    "iou_tiny": "IoU if this were SAM2 tiny",
    "iou_small": "IoU if this were SAM2 small",
    "iou_base_plus": "IoU if this were SAM2 base+",
    "iou_large": "IoU if this were SAM2 large",
    "iou_unsupervised": "IoU of SAM's own pick",
    "iou_dense_prompt": "IoU with a dense 8-point prompt",
    "model_gap": "gain from a larger model",
    "prompt_gap": "gain from more clicks",
    "task_gap": "gain from picking another mask",
}


def describe_estimates(
    sam_score: float, entropy: float, uncertainty: Mapping[str, float], area: int | None = None
) -> list[str]:
    """The estimates of one mask as short lines of text, gaps in IoU points."""
    lines = [f"SAM score: {sam_score:.3f}", f"entropy H_Std: {entropy:.3f} bits"]
    if area is not None:
        lines.append(f"area: {area} px")
    for name, value in uncertainty.items():
        words = _HEAD_WORDS.get(name, name)
        if is_gap_head(name):
            lines.append(f"{words}: {100 * value:+.1f} IoU points")
        else:
            lines.append(f"predicted {words}: {value:.3f}")
    biggest_gap = max(((v, n) for n, v in uncertainty.items() if is_gap_head(n)), default=None)
    if biggest_gap is not None and biggest_gap[0] > 0.05:
        lines.append(f"-> most to gain: {_HEAD_WORDS[biggest_gap[1]]}")
    return lines


def render_prediction(
    image: np.ndarray,
    result: UncertainPrediction,
    path: str | os.PathLike[str],
    *,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: Sequence[float] | None = None,
    title: str | None = None,
    footnote: str | None = None,
) -> Path:
    """Write a PNG with one row per returned mask: overlay, uncertainty map and the estimates in words.

    Args:
        image: H x W x 3 uint8 RGB image.
        result: The prediction of one prompt (not a batch).
        path: Output PNG path.
        points: (N, 2) prompt points (x, y) to draw.
        point_labels: (N,) labels of the points: 1 = green star, 0 = red cross.
        box: x0, y0, x1, y1 prompt box to draw.
        title: Figure title.
        footnote: A line under the figure (e.g. a warning that the numbers are meaningless).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if result.sam_scores.ndim != 1:
        raise ValueError("render_prediction draws one prompt; index a batched result first")
    maps = result.uncertainty_map("image")
    num_masks = result.sam_scores.shape[0]
    figure, axes = plt.subplots(
        num_masks, 3, figsize=(13, 3.6 * num_masks), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 0.8]}
    )
    for row in range(num_masks):
        overlay_axis, map_axis, text_axis = axes[row]
        mask = result.masks[row] > 0 if result.masks.dtype != bool else result.masks[row]
        overlay_axis.imshow(image)
        tint = np.zeros((*mask.shape, 4))
        tint[mask] = (0.12, 0.47, 1.0, 0.5)
        overlay_axis.imshow(tint)
        if mask.any():
            overlay_axis.contour(mask, levels=[0.5], colors=["#1e78ff"], linewidths=1.2)
        _draw_prompts(overlay_axis, points, point_labels, box)
        token = int(result.mask_token_index[row])
        overlay_axis.set_title(f"mask {row} (decoder token {token})")
        shown = map_axis.imshow(maps[row], cmap="magma", vmin=0.0, vmax=1.0)
        _draw_prompts(map_axis, points, point_labels, box)
        map_axis.set_title("per-pixel entropy (bits)")
        figure.colorbar(shown, ax=map_axis, fraction=0.046, pad=0.02)
        for axis in (overlay_axis, map_axis):
            axis.set_xticks([])
            axis.set_yticks([])
        text_axis.axis("off")
        estimates = {name: float(values[row]) for name, values in result.uncertainty.items()}
        lines = describe_estimates(
            float(result.sam_scores[row]), float(result.entropy[row]), estimates, int(np.count_nonzero(mask))
        )
        text_axis.text(
            0.0,
            1.0,
            "\n".join(lines),
            va="top",
            ha="left",
            family="monospace",
            fontsize=9.5,
            transform=text_axis.transAxes,
        )
    if title:
        figure.suptitle(title, fontsize=12)
    if footnote:
        figure.text(0.5, 0.005, footnote, ha="center", va="bottom", fontsize=10, color="#b00020")
    figure.tight_layout(rect=(0, 0.03 if footnote else 0, 1, 0.97 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _draw_prompts(axis, points, point_labels, box) -> None:
    if points is not None and len(points):
        points = np.asarray(points, dtype=float).reshape(-1, 2)
        labels = np.ones(len(points)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        positive, negative = points[labels == 1], points[labels == 0]
        axis.scatter(positive[:, 0], positive[:, 1], marker="*", s=160, c="#22dd44", edgecolors="white", linewidths=1)
        axis.scatter(negative[:, 0], negative[:, 1], marker="X", s=110, c="#ee2222", edgecolors="white", linewidths=1)
    if box is not None:
        x0, y0, x1, y1 = (float(value) for value in box)
        from matplotlib.patches import Rectangle

        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#22dd44", linewidth=1.5))
