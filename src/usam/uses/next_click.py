"""Where to click next: strategies that propose the next click of an interactive segmentation, and the baselines.

A strategy proposes a *location* only; whoever clicks (a person, or the simulated user of
:mod:`usam.uses.simulated_user`) decides whether the click is positive or negative. Strategies that need no truth:

* ``uncertain-pixel``: the most uncertain pixel of the chosen mask's per-pixel entropy map.
* ``uncertain-region``: the point farthest inside the region where that map is at least
  :data:`UNCERTAIN_LEVEL_BITS` (a click in the middle of the widest uncertain band, not on its thin edge).
* ``disagreement``: the point farthest inside the region where SAM's three multimask outputs disagree.

Baselines: ``error-region``, the standard protocol of interactive segmentation (RITM, SimpleClick), which needs the
truth: the point farthest inside the false-negative or the false-positive region, whichever reaches farther; and
``random``, a pixel drawn uniformly from the image.

"Farthest inside" is the maximum of the Euclidean distance transform, the image's outside counting as outside the
region, ties broken by the first pixel in row-major order (as RITM does). The three truth-free strategies skip a
disk of :data:`EXCLUSION_FRACTION` of the shorter image side around earlier clicks (a model that ignored a click
would otherwise get the same proposal again); when their region is empty they fall back to ``uncertain-pixel``.
Points are ``(x, y)`` pixels, x the column.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from usam import sam2_adapter
from usam.errors import HeadsFileError, InvalidInputError
from usam.extraction.targets import best_output
from usam.head_table import GAP_OFFSET, HEADS, head_spec, size_head_name
from usam.models import size_and_family
from usam.validation import StrEnum, check_choice, check_float

if TYPE_CHECKING:
    from usam.predictor import UncertainPrediction, UncertainSAM

UNCERTAIN_LEVEL_BITS = 0.5
"""``uncertain-region`` clicks into pixels of at least this entropy (bits): foreground probability in [0.11, 0.89]."""

EXCLUSION_FRACTION = 0.02
"""Radius of the disk around earlier clicks that truth-free strategies skip, as a share of the shorter side."""

PROMPT_GAP_HEAD = HEADS["prompt_gap"].name
"""The head whose estimate says whether another click would help."""

DEFAULT_THRESHOLD = 0.05
"""Default τ: another click is asked for when the predicted prompt gap exceeds it."""


class ClickStrategy(StrEnum):
    """How the next click's location is chosen."""

    UNCERTAIN_PIXEL = "uncertain-pixel"
    """The most uncertain pixel of the chosen mask's entropy map."""
    UNCERTAIN_REGION = "uncertain-region"
    """The point farthest inside the region of at least :data:`UNCERTAIN_LEVEL_BITS` entropy."""
    DISAGREEMENT = "disagreement"
    """The point farthest inside the region where the three multimask outputs disagree."""
    ERROR_REGION = "error-region"
    """Baseline that needs the truth: the centre of the largest error region (the standard protocol)."""
    RANDOM = "random"
    """Baseline: a pixel drawn uniformly from the image."""

    @property
    def needs_truth(self) -> bool:
        """Whether the strategy reads the ground truth (a baseline for simulations only)."""
        return self is ClickStrategy.ERROR_REGION

    @property
    def needs_three_masks(self) -> bool:
        """Whether the strategy reads SAM's three multimask outputs for the current clicks."""
        return self is ClickStrategy.DISAGREEMENT

    @property
    def needs_uncertainty_map(self) -> bool:
        """Whether the strategy reads the chosen mask's per-pixel entropy map (or falls back to it)."""
        return self in (ClickStrategy.UNCERTAIN_PIXEL, ClickStrategy.UNCERTAIN_REGION, ClickStrategy.DISAGREEMENT)


class AnswerMask(StrEnum):
    """Which of SAM's three masks a multimask call's answer is."""

    HEADS = "heads"
    """The mask with the highest IoU predicted by usam's head of the model's size (``iou_<size>``)."""
    SAM = "sam"
    """SAM's own pick: the mask with the highest SAM score."""


def check_threshold(threshold: object, name: str = "threshold") -> float:
    """A prompt-gap threshold τ: a finite number within the gap heads' range [-0.5, 0.5].

    Raises:
        InvalidInputError: If it is not a finite number or lies outside that range.

    Example:
        >>> check_threshold(0.05)
        0.05
    """
    return check_float(threshold, name, minimum=-GAP_OFFSET, maximum=GAP_OFFSET)


# --- Geometry -------------------------------------------------------------------------------------------------------


def _as_map(values: np.ndarray, name: str, *, boolean: bool) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2 or array.size == 0:
        raise InvalidInputError(f"{name} must be a non-empty 2-D (height, width) array, got shape {array.shape}")
    if boolean:
        return array.astype(bool, copy=False)
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return array


def distance_to_outside(region: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of every pixel of ``region`` to the nearest pixel outside it; 0 outside.

    The image's outside counts as outside the region (a pixel on the border is 1 from it), as in RITM's protocol.
    Uses OpenCV's transform when OpenCV is installed (about 40 times faster), else a numpy implementation
    (Felzenszwalb and Huttenlocher's lower envelope of parabolas); both give the same, exact values, the same in
    every call (ties between equally distant pixels are ties).

    Args:
        region: (H, W) boolean map.

    Returns:
        (H, W) float32 distances in pixels.

    Example:
        >>> distance_to_outside(np.ones((1, 5), bool)).tolist()
        [[1.0, 1.0, 1.0, 1.0, 1.0]]
        >>> distance_to_outside(np.ones((5, 5), bool))[2].tolist()
        [1.0, 2.0, 3.0, 2.0, 1.0]
    """
    padded = np.pad(_as_map(region, "region", boolean=True), 1)
    try:
        import cv2
    except ImportError:
        squared = _squared_distance_numpy(padded)
    else:
        distance = cv2.distanceTransform(padded.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        # OpenCV's threads round differently from call to call (1e-7), which would break ties between equally
        # distant pixels at random; squared distances are whole numbers, so rounding them makes the result exact.
        squared = np.round(distance.astype(np.float64) ** 2)
    return np.sqrt(squared[1:-1, 1:-1]).astype(np.float32)


def _squared_distance_numpy(region: np.ndarray) -> np.ndarray:
    """Squared distances to the nearest False pixel of a region whose border is False (see the caller)."""
    height, width = region.shape
    vertical = np.zeros((height, width))
    # Distance to the nearest outside pixel in the same column, scanning down and then up.
    running = np.zeros(width)
    for row in range(height):
        running = np.where(region[row], running + 1.0, 0.0)
        vertical[row] = running
    running = np.zeros(width)
    for row in range(height - 1, -1, -1):
        running = np.where(region[row], running + 1.0, 0.0)
        vertical[row] = np.minimum(vertical[row], running)
    return _lower_envelope(vertical**2)


def _lower_envelope(costs: np.ndarray) -> np.ndarray:
    """``min_q costs[r, q] + (x - q)**2`` for every row r and column x, all rows at once (exact)."""
    num_rows, width = costs.shape
    rows = np.arange(num_rows)
    sources = np.zeros((num_rows, width), np.int64)  # column of each parabola in a row's envelope
    bounds = np.empty((num_rows, width + 1))  # where each parabola starts to be the lowest
    bounds[:, 0], bounds[:, 1] = -np.inf, np.inf
    top = np.zeros(num_rows, np.int64)
    for column in range(1, width):
        lifted = costs[:, column] + column * column
        crossing = np.empty(num_rows)
        active = rows
        while active.size:
            last = sources[active, top[active]]
            where = (lifted[active] - (costs[active, last] + last * last)) / (2.0 * (column - last))
            hidden = where <= bounds[active, top[active]]
            crossing[active[~hidden]] = where[~hidden]
            active = active[hidden]
            top[active] -= 1
        top += 1
        sources[rows, top] = column
        bounds[rows, top] = crossing
        bounds[rows, top + 1] = np.inf
    result = np.empty((num_rows, width))
    current = np.zeros(num_rows, np.int64)
    for column in range(width):
        while True:
            advance = bounds[rows, current + 1] < column
            if not advance.any():
                break
            current[advance] += 1
        source = sources[rows, current]
        result[:, column] = (column - source) ** 2 + costs[rows, source]
    return result


def _first_max_point(values: np.ndarray) -> np.ndarray:
    """(x, y) of the first maximum in row-major order."""
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    return np.array([column, row], dtype=np.int64)


def farthest_inside_point(region: np.ndarray) -> np.ndarray | None:
    """(x, y) of the pixel of ``region`` farthest from its outside (see :func:`distance_to_outside`), or None.

    Example:
        >>> region = np.zeros((7, 9), bool)
        >>> region[1:6, 2:7] = True
        >>> farthest_inside_point(region).tolist()
        [4, 3]
    """
    region = _as_map(region, "region", boolean=True)
    if not region.any():
        return None
    return _first_max_point(distance_to_outside(region))


def near_clicks(clicks: np.ndarray | None, shape: tuple[int, int], radius: float) -> np.ndarray:
    """(H, W) map of the pixels within ``radius`` of any click (x, y)."""
    covered = np.zeros(shape, dtype=bool)
    if clicks is None or len(clicks) == 0:
        return covered
    rows = np.arange(shape[0])[:, None]
    columns = np.arange(shape[1])[None, :]
    for x, y in np.asarray(clicks, dtype=np.float64).reshape(-1, 2):
        covered |= (columns - x) ** 2 + (rows - y) ** 2 <= radius * radius
    return covered


def exclusion_radius(shape: tuple[int, int]) -> float:
    """Radius (pixels) of the disk around earlier clicks that truth-free strategies skip; at least 1."""
    return max(1.0, EXCLUSION_FRACTION * min(shape))


# --- Strategies -----------------------------------------------------------------------------------------------------


def most_uncertain_pixel(uncertainty_map: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """(x, y) of the largest value of an uncertainty map outside ``excluded`` (everywhere if all is excluded).

    Example:
        >>> values = np.zeros((4, 6))
        >>> values[2, 5] = 0.9
        >>> most_uncertain_pixel(values).tolist()
        [5, 2]
    """
    values = _as_map(uncertainty_map, "uncertainty map", boolean=False)
    if excluded is not None and not excluded.all():
        values = np.where(excluded, -np.inf, values)
    return _first_max_point(values)


def uncertain_region(uncertainty_map: np.ndarray, level: float = UNCERTAIN_LEVEL_BITS) -> np.ndarray:
    """Pixels whose entropy is at least ``level`` bits."""
    return _as_map(uncertainty_map, "uncertainty map", boolean=False) >= level


def disagreement_region(three_masks: np.ndarray) -> np.ndarray:
    """Pixels where SAM's multimask outputs (K, H, W) do not all agree."""
    masks = np.asarray(three_masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[0] < 2:
        raise InvalidInputError(f"three_masks must have shape (K, H, W) with K >= 2 outputs, got {masks.shape}")
    return masks.any(axis=0) & ~masks.all(axis=0)


def error_region_click(mask: np.ndarray, truth: np.ndarray) -> np.ndarray | None:
    """The standard protocol's next click (RITM, SimpleClick): (x, y), or None when the mask equals the truth.

    The click goes to the point farthest inside the false-negative region (missed object) or the false-positive
    region (spill), whichever reaches farther from its outside; on a tie, the false-positive one, as RITM's
    ``is_positive = fn_max_dist > fp_max_dist``. The user makes it positive in a false negative, else negative.

    Example:
        >>> truth = np.zeros((9, 9), bool)
        >>> truth[1:8, 1:8] = True
        >>> error_region_click(np.zeros((9, 9), bool), truth).tolist()
        [4, 4]
    """
    mask = _as_map(mask, "mask", boolean=True)
    truth = _as_map(truth, "truth", boolean=True)
    if mask.shape != truth.shape:
        raise InvalidInputError(f"mask {mask.shape} and truth {truth.shape} must have the same shape")
    missed_distance = distance_to_outside(truth & ~mask)
    spilled_distance = distance_to_outside(mask & ~truth)
    if missed_distance.max() == 0 and spilled_distance.max() == 0:
        return None
    larger = missed_distance if missed_distance.max() > spilled_distance.max() else spilled_distance
    return _first_max_point(larger)


def random_click(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(x, y) of a pixel drawn uniformly from an image of ``shape`` (H, W)."""
    return np.array([rng.integers(0, shape[1]), rng.integers(0, shape[0])], dtype=np.int64)


def propose_click(
    strategy: ClickStrategy | str,
    *,
    mask: np.ndarray,
    uncertainty_map: np.ndarray | None = None,
    three_masks: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    clicks: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray | None:
    """The next click's location (x, y) that a strategy proposes for the current answer.

    Args:
        strategy: A :class:`ClickStrategy`.
        mask: (H, W) the current answer (the chosen mask).
        uncertainty_map: (H, W) per-pixel entropy of that mask; needed by the truth-free strategies.
        three_masks: (3, H, W) SAM's multimask outputs for the current clicks; needed by ``disagreement``.
        truth: (H, W) ground truth; needed by ``error-region``.
        clicks: (N, 2) earlier clicks, skipped by the truth-free strategies.
        rng: Random generator; needed by ``random``.

    Returns:
        (2,) int64 (x, y), or None only for ``error-region`` when the mask is already the truth.

    Raises:
        InvalidInputError: An unknown strategy or a missing input that the strategy needs.
    """
    strategy = check_choice(ClickStrategy, strategy, "strategy")
    mask = _as_map(mask, "mask", boolean=True)
    if strategy is ClickStrategy.ERROR_REGION:
        if truth is None:
            raise InvalidInputError("the error-region strategy needs the truth (it is a baseline for simulations)")
        return error_region_click(mask, truth)
    if strategy is ClickStrategy.RANDOM:
        if rng is None:
            raise InvalidInputError("the random strategy needs a random generator (rng)")
        return random_click(mask.shape, rng)
    if uncertainty_map is None:
        raise InvalidInputError(f"the {strategy} strategy needs the mask's uncertainty map")
    excluded = near_clicks(clicks, mask.shape, exclusion_radius(mask.shape))
    if strategy is ClickStrategy.UNCERTAIN_REGION:
        region = uncertain_region(uncertainty_map)
    elif strategy is ClickStrategy.DISAGREEMENT:
        if three_masks is None:
            raise InvalidInputError("the disagreement strategy needs SAM's three multimask outputs (three_masks)")
        region = disagreement_region(three_masks)
    else:
        region = None
    point = farthest_inside_point(region & ~excluded) if region is not None else None
    return point if point is not None else most_uncertain_pixel(uncertainty_map, excluded)


# --- From a model's prediction --------------------------------------------------------------------------------------


def choice_head(model: UncertainSAM, mask_choice: AnswerMask | str) -> str | None:
    """The IoU head that chooses among SAM's three masks (None for SAM's pick).

    Raises:
        HeadsFileError: ``heads`` choice without heads, or heads without the ``iou_<size>`` head of the model.
    """
    if check_choice(AnswerMask, mask_choice, "mask choice") is AnswerMask.SAM:
        return None
    model_name = sam2_adapter.model_name_of(model.predictor) or ""
    size, _ = size_and_family(model_name)
    if size is None:
        raise HeadsFileError(
            f"cannot tell the size of the model {model_name!r}, so no iou_<size> head can choose its mask; "
            "choose SAM's pick instead (mask choice 'sam')"
        )
    name = size_head_name(size)
    if model.heads is None or name not in model.heads.names:
        raise HeadsFileError(
            f"choosing the mask by usam's predicted IoU needs the {name} head (the model is {model_name}), which these "
            "heads lack; use heads with it, or choose SAM's pick (mask choice 'sam')"
        )
    return name


def require_prompt_gap(model: UncertainSAM) -> None:
    """Refuse heads without the prompt-gap head, which says whether another click would help.

    Raises:
        HeadsFileError: No heads, or heads without ``prompt_gap``.
    """
    head_spec(PROMPT_GAP_HEAD)
    if model.heads is None or PROMPT_GAP_HEAD not in model.heads.names:
        have = ", ".join(model.heads.names) if model.heads is not None else "no heads"
        raise HeadsFileError(
            f"proposing clicks needs the {PROMPT_GAP_HEAD} head to tell whether another click would help, but the "
            f"model has {have}; use heads with {PROMPT_GAP_HEAD}"
        )


def chosen_outputs(prediction: UncertainPrediction, choice_head_name: str | None) -> np.ndarray:
    """Index of the chosen mask of every prompt: SAM's pick, or the highest IoU predicted by a head.

    Returns:
        Array of the shape of ``prediction.sam_scores`` without its last axis.
    """
    scores = prediction.sam_scores if choice_head_name is None else prediction.uncertainty[choice_head_name]
    return best_output(np.asarray(scores, dtype=np.float64))


def mask_uncertainty_map(prediction: UncertainPrediction, index: tuple[int, ...]) -> np.ndarray:
    """Per-pixel entropy (bits) at image resolution of one mask, ``index`` into the prediction's per-mask axes."""
    single = dataclasses.replace(prediction, low_res_logits=prediction.low_res_logits[index][None])
    return single.uncertainty_map("image")[0]


@dataclasses.dataclass(frozen=True)
class NextClick:
    """A proposed next click for a prompt.

    Attributes:
        point: (x, y) pixels of the proposed click.
        strategy: The strategy that proposed it.
        needed: Whether the predicted prompt gap exceeds the threshold (another click should help).
        prompt_gap: The prompt gap predicted for the chosen mask.
        threshold: τ.
        mask_index: Index of the chosen mask among the prediction's masks.
        prediction: The prediction of the current clicks.
    """

    point: np.ndarray
    strategy: ClickStrategy
    needed: bool
    prompt_gap: float
    threshold: float
    mask_index: int
    prediction: UncertainPrediction


def propose_next_click(
    model: UncertainSAM,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    *,
    strategy: ClickStrategy | str = ClickStrategy.UNCERTAIN_REGION,
    threshold: float = DEFAULT_THRESHOLD,
    mask_choice: AnswerMask | str = AnswerMask.HEADS,
) -> NextClick:
    """Predict the current clicks' mask on the image the model holds and propose where to click next.

    One click gets SAM's three masks and the chosen one (``mask_choice``); more clicks get one mask, as SAM2's
    interactive demo does. ``disagreement`` adds a multimask call with the same clicks.

    Args:
        model: An :class:`usam.UncertainSAM` with heads that include ``prompt_gap`` (and ``iou_<size>`` for the
            ``heads`` mask choice), its image set.
        point_coords: (N, 2) clicks (x, y) in pixels.
        point_labels: (N,) 1 positive, 0 negative.
        strategy: A truth-free :class:`ClickStrategy` (or ``random``).
        threshold: τ in [-0.5, 0.5]: another click is needed when the predicted prompt gap exceeds it.
        mask_choice: How the answer of a one-click call is chosen.

    Raises:
        InvalidInputError: A bad threshold, the ``error-region`` strategy (it needs the truth), bad clicks.
        HeadsFileError: Heads without ``prompt_gap`` (or without the ``iou_<size>`` head the choice needs).
    """
    threshold = check_threshold(threshold)
    strategy = check_choice(ClickStrategy, strategy, "strategy")
    if strategy.needs_truth:
        raise InvalidInputError(f"the {strategy} strategy needs the truth; it is a baseline for evaluate-clicks only")
    require_prompt_gap(model)
    head = choice_head(model, mask_choice)
    coords = np.asarray(point_coords, dtype=np.float32).reshape(-1, 2)
    labels = np.asarray(point_labels).reshape(-1)
    multimask = len(coords) == 1
    prediction = model.predict(point_coords=coords, point_labels=labels, multimask_output=multimask)
    index = int(chosen_outputs(prediction, head)) if multimask else 0
    three_masks = prediction.masks if multimask else None
    if strategy.needs_three_masks and three_masks is None:
        three_masks = model.predict(point_coords=coords, point_labels=labels, multimask_output=True).masks
    point = propose_click(
        strategy,
        mask=prediction.masks[index],
        uncertainty_map=mask_uncertainty_map(prediction, (index,)),
        three_masks=three_masks,
        clicks=coords,
        rng=np.random.default_rng(0),
    )
    gap = float(prediction.uncertainty[PROMPT_GAP_HEAD][index])
    return NextClick(point, strategy, gap > threshold, gap, threshold, index, prediction)
