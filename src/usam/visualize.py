"""Figures: a prediction (mask and prompts, uncertainty map, estimates in words) and automatic masks by their value."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam.files import atomic_path
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


MAX_FIGURE_SIDE = 1024
"""Figures are drawn from a copy of the image, masks and maps whose longest side is at most this many pixels: a panel
is about 450 pixels wide, and full-resolution copies of a large photo would cost gigabytes."""


def figure_size(image_size: tuple[int, int], max_side: int = MAX_FIGURE_SIDE) -> tuple[int, int]:
    """(h, w) of the downscaled copy a figure is drawn from (the image size itself if it is small enough)."""
    height, width = image_size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _nearest_rows_columns(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows = ((np.arange(size[0]) + 0.5) * image_size[0] / size[0]).astype(np.intp)
    columns = ((np.arange(size[1]) + 0.5) * image_size[1] / size[1]).astype(np.intp)
    return rows, columns


def _downscaled_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(image.shape[:2]) == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BOX))


def _object_prompt(values: np.ndarray | None, obj: int, batched: bool, single_ndim: int) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values)
    return values[obj] if batched and values.ndim > single_ndim else values


def render_prediction(
    image: np.ndarray,
    result: UncertainPrediction,
    path: str | os.PathLike[str],
    *,
    points: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    box: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
    footnote: str | None = None,
) -> Path:
    """Write a PNG with one row per object and mask: overlay, uncertainty map and the estimates in words.

    The figure is drawn from a copy of the image, masks and uncertainty maps downscaled to at most
    :data:`MAX_FIGURE_SIDE` pixels on the longest side, so large images cost little memory; prompts are drawn in
    the image's pixel coordinates.

    Args:
        image: H x W x 3 uint8 RGB image.
        result: A prediction of one prompt, or of B batched prompts (objects).
        path: Output PNG path (written atomically).
        points: (N, 2) or, batched, (B, N, 2) prompt points (x, y) to draw.
        point_labels: (N,) or (B, N) labels of the points: 1 = green star, 0 = red cross.
        box: x0, y0, x1, y1 prompt box, or (B, 4) boxes, to draw.
        title: Figure title.
        footnote: A line under the figure (e.g. a warning that the numbers are meaningless).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    batched = result.sam_scores.ndim == 2
    num_objects = result.sam_scores.shape[0] if batched else 1
    num_masks = result.sam_scores.shape[-1]
    image_size = (int(image.shape[0]), int(image.shape[1]))
    size = figure_size(image_size)
    scale = (size[1] / image_size[1], size[0] / image_size[0])
    shown_image = _downscaled_image(image, size)
    rows, columns = _nearest_rows_columns(image_size, size)
    maps = result.uncertainty_map(size).reshape(num_objects, num_masks, *size)
    figure, axes = plt.subplots(
        num_objects * num_masks,
        3,
        figsize=(13, 3.6 * num_objects * num_masks),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 0.8]},
    )
    for obj in range(num_objects):
        masks = result.masks[obj] if batched else result.masks
        scores = result.sam_scores[obj] if batched else result.sam_scores
        entropy = result.entropy[obj] if batched else result.entropy
        tokens = result.mask_token_index[obj] if batched else result.mask_token_index
        object_points = _object_prompt(points, obj, batched, 2)
        object_labels = _object_prompt(point_labels, obj, batched, 1)
        object_box = _object_prompt(box, obj, batched, 1)
        for index in range(num_masks):
            overlay_axis, map_axis, text_axis = axes[obj * num_masks + index]
            full_mask = masks[index]
            area = int(np.count_nonzero(full_mask))
            # Nearest-neighbour sampling of the (boolean) mask: no full-resolution copy.
            mask = full_mask[np.ix_(rows, columns)]
            mask = mask if mask.dtype == bool else mask > 0
            overlay_axis.imshow(shown_image)
            tint = np.zeros((*mask.shape, 4), dtype=np.float32)
            tint[mask] = (0.12, 0.47, 1.0, 0.5)
            overlay_axis.imshow(tint)
            if mask.any():
                overlay_axis.contour(mask, levels=[0.5], colors=["#1e78ff"], linewidths=1.2)
            _draw_prompts(overlay_axis, object_points, object_labels, object_box, scale)
            label = f"object {obj}, mask {index}" if num_objects > 1 else f"mask {index}"
            overlay_axis.set_title(f"{label} (decoder token {int(tokens[index])})")
            shown = map_axis.imshow(maps[obj, index], cmap="magma", vmin=0.0, vmax=1.0)
            _draw_prompts(map_axis, object_points, object_labels, object_box, scale)
            map_axis.set_title("per-pixel entropy (bits)")
            figure.colorbar(shown, ax=map_axis, fraction=0.046, pad=0.02)
            for axis in (overlay_axis, map_axis):
                axis.set_xticks([])
                axis.set_yticks([])
            text_axis.axis("off")
            estimates = {
                name: float(values[obj, index] if batched else values[index])
                for name, values in result.uncertainty.items()
            }
            lines = describe_estimates(float(scores[index]), float(entropy[index]), estimates, area)
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
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png")
    finally:
        plt.close(figure)
    return path


def _draw_prompts(axis, points, point_labels, box, scale: tuple[float, float] = (1.0, 1.0)) -> None:
    if points is not None and len(points):
        points = np.asarray(points, dtype=float).reshape(-1, 2) * scale
        labels = np.ones(len(points)) if point_labels is None else np.asarray(point_labels).reshape(-1)
        positive, negative = points[labels == 1], points[labels == 0]
        axis.scatter(positive[:, 0], positive[:, 1], marker="*", s=160, c="#22dd44", edgecolors="white", linewidths=1)
        axis.scatter(negative[:, 0], negative[:, 1], marker="X", s=110, c="#ee2222", edgecolors="white", linewidths=1)
    if box is not None:
        x0, x1 = (float(value) * scale[0] for value in (box[0], box[2]))
        y0, y1 = (float(value) * scale[1] for value in (box[1], box[3]))
        from matplotlib.patches import Rectangle

        axis.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="#22dd44", linewidth=1.5))


def render_automatic_masks(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    values: Sequence[float],
    path: str | os.PathLike[str],
    *,
    value_label: str,
    points: np.ndarray | None = None,
    title: str | None = None,
    footnote: str | None = None,
) -> Path:
    """Write a PNG of automatic masks, each filled with the colour of its value (e.g. predicted IoU), with a colour bar.

    Left the image, right every mask painted over it (largest first, so small masks stay visible, each outlined),
    red for low values and green for high ones on a fixed 0-1 scale, so figures compare at a glance.

    Args:
        image: H x W x 3 uint8 RGB image.
        masks: H x W boolean masks.
        values: One value in [0, 1] per mask.
        path: Output PNG path (written atomically).
        value_label: What the colour shows, for the colour bar.
        points: (N, 2) prompt points (x, y) of the masks, drawn as small dots.
        title: Figure title.
        footnote: A line under the figure.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image_size = (int(image.shape[0]), int(image.shape[1]))
    size = figure_size(image_size)
    rows, columns = _nearest_rows_columns(image_size, size)
    shown_image = _downscaled_image(image, size)
    small = [np.asarray(mask, dtype=bool)[np.ix_(rows, columns)] for mask in masks]
    colours = colormaps["RdYlGn"]
    norm = Normalize(0.0, 1.0)
    painted = np.zeros((*size, 4), dtype=np.float32)
    outlines = np.zeros(size, dtype=bool)
    for index in sorted(range(len(small)), key=lambda index: -int(small[index].sum())):
        mask = small[index]
        painted[mask] = (*colours(norm(float(values[index])))[:3], 0.6)
        # A mask's outline: its pixels with a background neighbour.
        interior = mask.copy()
        interior[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        outlines |= mask & ~interior
    painted[outlines] = (1.0, 1.0, 1.0, 0.9)
    aspect = size[1] / size[0]
    figure, (image_axis, mask_axis) = plt.subplots(1, 2, figsize=(2 * 5.5 * aspect + 1.2, 5.5), squeeze=True)
    image_axis.imshow(shown_image)
    image_axis.set_title("image")
    mask_axis.imshow(shown_image)
    mask_axis.imshow(painted)
    mask_axis.set_title(f"{len(small)} masks, coloured by {value_label}")
    if points is not None and len(points):
        scaled = np.asarray(points, dtype=float).reshape(-1, 2) * (size[1] / image_size[1], size[0] / image_size[0])
        mask_axis.scatter(scaled[:, 0], scaled[:, 1], s=8, c="black", edgecolors="white", linewidths=0.5)
    for axis in (image_axis, mask_axis):
        axis.set_xticks([])
        axis.set_yticks([])
    colour_bar = figure.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=mask_axis, fraction=0.046, pad=0.02)
    colour_bar.set_label(value_label)
    return finish_figure(figure, path, title=title, footnote=footnote)


def finish_figure(figure: Any, path: str | Path, *, title: str | None = None, footnote: str | None = None) -> Path:
    """Add the title and a red footnote (e.g. "random weights: the numbers mean nothing"), write the PNG atomically.

    The figure is closed afterwards, also when writing fails.

    Returns:
        The path written.
    """
    import matplotlib.pyplot as plt

    if title:
        figure.suptitle(title, fontsize=12)
    if footnote:
        figure.text(0.5, 0.005, footnote, ha="center", va="bottom", fontsize=10, color="#b00020")
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=100, format="png", bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
