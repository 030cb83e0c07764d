"""A simulated user who clicks where a strategy proposes, and the measures of interactive segmentation.

The loop (:func:`simulate_image`, :func:`run_click_simulation`), per object and strategy:

1. The first click is the object's centre click (:func:`usam.extraction.prompts.center_point`), positive. SAM2
   returns three masks; the answer is the one with the highest IoU predicted by usam's ``iou_<size>`` head (or SAM's
   own pick, :class:`usam.uses.next_click.AnswerMask`).
2. Each further round, the strategy proposes a location from the current answer (its uncertainty map, or SAM's three
   masks for the current clicks, or the truth for the standard protocol); the user labels the click positive if the
   pixel is in the true object, else negative; SAM2 predicts one mask from all clicks so far, as SAM2's interactive
   demo does after the first click. No earlier mask is fed back (click-map models cannot take one).
3. The IoU of the answer with the truth (full resolution) and its predicted prompt gap are recorded every round. When
   the standard protocol finds no error left, the answer stays as it is.

All objects and strategies of an image run in one batched decoder call per round; the image is encoded once.
Random clicks are drawn from :func:`usam.extraction.prompts.prompt_rng` (seed, image, object), so a run is the same
for a seed whatever the order or the subset of images.

Measures: NoC@t (number of clicks to reach IoU t, the maximum when never reached, as RITM counts it), mean IoU after
k clicks, with percentile-bootstrap intervals over objects, and "ask only when needed": a click is asked for only while
the predicted prompt gap of the answer exceeds τ (:func:`ask_when_needed`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from usam.datasets.base import Sample
from usam.errors import DatasetError, InvalidInputError, UsamError, UsamWarning
from usam.extraction.prompts import center_point, prompt_rng
from usam.extraction.targets import mask_ious
from usam.files import write_json_atomically
from usam.heads import heads_fingerprint
from usam.metrics import DEFAULT_BOOTSTRAP_RESAMPLES, bootstrap_statistics, percentile_interval
from usam.uses.next_click import (
    PROMPT_GAP_HEAD,
    AnswerMask,
    ClickStrategy,
    check_threshold,
    choice_head,
    chosen_outputs,
    mask_uncertainty_map,
    propose_click,
    require_prompt_gap,
)
from usam.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    from usam.datasets.base import DatasetReader
    from usam.predictor import UncertainSAM

NOC_TARGETS = (0.85, 0.90)
"""The IoUs that NoC is reported for (NoC@85, NoC@90)."""

MIOU_AT_CLICKS = (1, 2, 3, 4, 5)
"""The click counts that mean IoU is reported for."""

THRESHOLD_GRID = tuple(float(value) for value in np.round(np.arange(-0.2, 0.2001, 0.01), 2))
"""τ values of the ask-only-when-needed curve (the prompt gap heads' useful range)."""

RECORDS_FORMAT = "usam-click-records"
"""``format`` of the partial records file that lets an interrupted run resume."""


@dataclasses.dataclass(frozen=True)
class SimulationOptions:
    """Settings of a simulated-user run; a run resumes only with the same settings.

    Attributes:
        max_clicks: Clicks per object and strategy (NoC counts this when the target is never reached).
        seed: Seed of the random clicks.
        strategies: The strategies to run (each on every object).
        mask_choice: How the answer of the first (multimask) click is chosen.
    """

    max_clicks: int = 20
    seed: int = 0
    strategies: tuple[ClickStrategy, ...] = tuple(ClickStrategy)
    mask_choice: AnswerMask = AnswerMask.HEADS

    def __post_init__(self) -> None:
        check_int(self.max_clicks, "max clicks", minimum=1, maximum=1000)
        check_int(self.seed, "seed", minimum=0)
        strategies = tuple(check_choice(ClickStrategy, value, "strategy") for value in self.strategies)
        if not strategies or len(set(strategies)) != len(strategies):
            raise InvalidInputError(f"strategies must be distinct and at least one, got {list(self.strategies)}")
        object.__setattr__(self, "strategies", strategies)
        object.__setattr__(self, "mask_choice", check_choice(AnswerMask, self.mask_choice, "mask choice"))

    def as_record(self) -> dict[str, Any]:
        """The options as plain JSON values."""
        return {
            "max_clicks": self.max_clicks,
            "seed": self.seed,
            "strategies": [str(strategy) for strategy in self.strategies],
            "mask_choice": str(self.mask_choice),
        }


@dataclasses.dataclass
class ObjectRun:
    """One object's run under one strategy.

    Attributes:
        image_key: The image.
        object_id: The object within the image.
        strategy: The strategy that proposed the clicks after the first.
        ious: IoU of the answer after 1, 2, ..., max_clicks clicks.
        prompt_gaps: Predicted prompt gap of the answer after each click.
        clicks: (x, y, label) of every click made (fewer than max_clicks when no error was left).
    """

    image_key: str
    object_id: str
    strategy: ClickStrategy
    ious: list[float]
    prompt_gaps: list[float]
    clicks: list[list[int]]

    def as_record(self) -> dict[str, Any]:
        """The run as plain JSON values."""
        return {**dataclasses.asdict(self), "strategy": str(self.strategy)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ObjectRun:
        """Inverse of :meth:`as_record`."""
        return cls(**{**record, "strategy": ClickStrategy(record["strategy"])})


@dataclasses.dataclass
class _Track:
    """The state of one (object, strategy) pair during the loop."""

    run: ObjectRun
    truth: np.ndarray
    rng: np.random.Generator
    mask: np.ndarray
    uncertainty_map: np.ndarray | None
    three_masks: np.ndarray | None
    finished: bool = False


def _labelled(point: np.ndarray, truth: np.ndarray) -> list[int]:
    """The simulated user's click: positive inside the true object, negative outside."""
    x, y = int(point[0]), int(point[1])
    return [x, y, int(truth[y, x])]


def simulate_image(model: UncertainSAM, sample: Sample, options: SimulationOptions) -> list[ObjectRun]:
    """Run the simulated user on every object of one image under every strategy (see the module).

    Args:
        model: An :class:`usam.UncertainSAM` whose heads include ``prompt_gap`` (and ``iou_<size>`` for the
            ``heads`` mask choice).
        sample: The image and its objects' true masks.
        options: The run's settings.

    Returns:
        One :class:`ObjectRun` per object and strategy, objects in id order, strategies in ``options`` order.

    Raises:
        HeadsFileError: Heads without the heads the run needs.
    """
    require_prompt_gap(model)
    head = choice_head(model, options.mask_choice)
    object_ids = sorted(sample.masks)
    if not object_ids:
        return []
    model.set_image(sample.image)
    truths = np.stack([np.asarray(sample.masks[object_id], dtype=bool) for object_id in object_ids])
    centres = np.stack([center_point(truth) for truth in truths]).astype(np.float32)
    first = model.predict(
        point_coords=centres[:, None], point_labels=np.ones((len(object_ids), 1)), multimask_output=True
    ).with_prompt_axis()  # an image with one object gives a single prompt, whose axis SAM2 drops
    chosen = chosen_outputs(first, head)
    tracks: list[_Track] = []
    for strategy in options.strategies:
        for index, object_id in enumerate(object_ids):
            mask = first.masks[index, chosen[index]]
            run = ObjectRun(
                sample.image_key,
                object_id,
                strategy,
                ious=[float(mask_ious(mask[None], truths[index])[0])],
                prompt_gaps=[float(first.uncertainty[PROMPT_GAP_HEAD][index, chosen[index]])],
                clicks=[[int(centres[index, 0]), int(centres[index, 1]), 1]],
            )
            tracks.append(
                _Track(
                    run,
                    truths[index],
                    # One generator per object and strategy: draws do not depend on the other strategies run.
                    prompt_rng(options.seed, sample.image_key, f"{object_id}/{strategy}"),
                    mask,
                    mask_uncertainty_map(first, (index, int(chosen[index])))
                    if strategy.needs_uncertainty_map
                    else None,
                    first.masks[index] if strategy.needs_three_masks else None,
                )
            )
    for _ in range(1, options.max_clicks):
        _next_round(model, tracks)
    return [track.run for track in tracks]


def _next_round(model: UncertainSAM, tracks: list[_Track]) -> None:
    """One round: every unfinished track gets its strategy's click, then one batched single-mask prediction."""
    clicking = []
    for track in tracks:
        if not track.finished:
            earlier = np.asarray(track.run.clicks, dtype=np.float64)[:, :2]
            point = propose_click(
                track.run.strategy,
                mask=track.mask,
                uncertainty_map=track.uncertainty_map,
                three_masks=track.three_masks,
                truth=track.truth,
                clicks=earlier,
                rng=track.rng,
            )
            if point is None:  # the standard protocol found no error left
                track.finished = True
            else:
                track.run.clicks.append(_labelled(point, track.truth))
                clicking.append(track)
        if track.finished:
            track.run.ious.append(track.run.ious[-1])
            track.run.prompt_gaps.append(track.run.prompt_gaps[-1])
    if not clicking:
        return
    # Every clicking track has made the same number of clicks, so they batch into one call.
    clicks = np.asarray([track.run.clicks for track in clicking], dtype=np.float32)
    coords, labels = clicks[..., :2], clicks[..., 2]
    # One clicking track is a single prompt, whose axis SAM2 drops.
    result = model.predict(point_coords=coords, point_labels=labels, multimask_output=False).with_prompt_axis()
    needs_three = [index for index, track in enumerate(clicking) if track.run.strategy.needs_three_masks]
    three = None
    if needs_three:
        three = (
            model.predict(point_coords=coords[needs_three], point_labels=labels[needs_three]).with_prompt_axis().masks
        )
    for index, track in enumerate(clicking):
        track.mask = result.masks[index, 0]
        track.run.ious.append(float(mask_ious(track.mask[None], track.truth)[0]))
        track.run.prompt_gaps.append(float(result.uncertainty[PROMPT_GAP_HEAD][index, 0]))
        if track.uncertainty_map is not None:
            track.uncertainty_map = mask_uncertainty_map(result, (index, 0))
        if three is not None and index in needs_three:
            track.three_masks = three[needs_three.index(index)]


def run_click_simulation(
    model: UncertainSAM,
    samples: DatasetReader | Iterable[Sample],
    options: SimulationOptions | None = None,
    *,
    records_path: str | Path | None = None,
    save_every_s: float = 30.0,
    progress: bool = True,
) -> list[ObjectRun]:
    """Run the simulated user over a dataset's images; resumable through a records file.

    Args:
        model: See :func:`simulate_image`.
        samples: A dataset reader (e.g. ``usam.datasets.open_dataset("folder", root, split)``) or samples.
        options: The run's settings (default :class:`SimulationOptions`).
        records_path: If given, the finished images' runs are written there (atomically, at most every
            ``save_every_s`` seconds and at the end); a later call with the same path and options skips them.
        save_every_s: Seconds between writes of the records file.
        progress: Show a progress bar.

    Returns:
        The runs of every object and strategy, images in the reader's order.

    Raises:
        UsamError: The records file belongs to a run with other options, or is unreadable.
    """
    from tqdm.auto import tqdm

    options = options or SimulationOptions()
    # What the runs depend on besides the options: resuming with another model or other heads is refused.
    identity = simulation_identity(model)
    done: dict[str, list[ObjectRun]] = _load_records(Path(records_path), options, identity) if records_path else {}
    keys = samples.keys() if hasattr(samples, "keys") else None
    last_save = time.monotonic()
    by_image: dict[str, list[ObjectRun]] = {}
    with tqdm(
        total=len(keys) if keys is not None else None, desc="simulated clicks", unit="image", disable=not progress
    ) as bar:
        for sample in _pending(samples, keys, done):
            if sample.image_key in done:
                by_image[sample.image_key] = done[sample.image_key]
            else:
                by_image[sample.image_key] = simulate_image(model, sample, options)
                if records_path and time.monotonic() - last_save >= save_every_s:
                    _save_records(Path(records_path), options, identity, {**done, **by_image})
                    last_save = time.monotonic()
            bar.update(1)
    if records_path:
        _save_records(Path(records_path), options, identity, {**done, **by_image})
    return [run for runs in by_image.values() for run in runs]


def simulation_identity(model: Any) -> dict[str, Any]:
    """What a click-simulation records file must have been written with to be resumed: the model and the heads.

    Args:
        model: The wrapped model (:class:`usam.UncertainSAM`).

    Returns:
        ``{"model": model name, "heads": fingerprint of the heads (None without heads)}``.
    """
    return {"model": model.model_name, "heads": heads_fingerprint(model.heads) if model.heads else None}


def recorded_identity(records_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The identity a click-simulation records file was written with (None if it is missing or unreadable)."""
    try:
        identity = json.loads(Path(records_path).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None
    return identity if isinstance(identity, dict) else None


class _Done:
    """A stand-in for an image whose runs the records file already holds (it is not decoded again)."""

    def __init__(self, image_key: str) -> None:
        self.image_key = image_key


def _pending(samples: Any, keys: list[str] | None, done: dict[str, list[ObjectRun]]) -> Iterable[Any]:
    if keys is None:
        yield from samples
        return
    for key in keys:
        if key in done:
            yield _Done(key)
            continue
        try:
            yield samples.load(key)
        except DatasetError as error:
            warnings.warn(f"skipped image {key!r}: {error}", UsamWarning, stacklevel=2)


def _load_records(path: Path, options: SimulationOptions, identity: dict[str, Any]) -> dict[str, list[ObjectRun]]:
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        if record.get("format") != RECORDS_FORMAT:
            raise ValueError("not a records file")
        runs = {key: [ObjectRun.from_record(run) for run in image] for key, image in record["images"].items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsamError(f"cannot resume from {path} ({error}); delete it or choose another --out") from None
    if record.get("options") != options.as_record():
        raise UsamError(
            f"{path} holds a run with other options ({record.get('options')}); use the same options or another --out"
        )
    if record.get("identity") != identity:
        raise UsamError(
            f"{path} holds a run of another model or other heads ({record.get('identity')}, now {identity}); delete "
            "it or choose another --out"
        )
    return runs


def _save_records(
    path: Path, options: SimulationOptions, identity: dict[str, Any], runs: dict[str, list[ObjectRun]]
) -> None:
    images = {key: [run.as_record() for run in image] for key, image in runs.items()}
    content = {"format": RECORDS_FORMAT, "options": options.as_record(), "identity": identity, "images": images}
    write_json_atomically(content, path, indent=None)


# --- Measures -------------------------------------------------------------------------------------------------------


def number_of_clicks(ious: np.ndarray, target: float) -> np.ndarray:
    """NoC@target per object: the first click count whose IoU reaches ``target``, the maximum if none does.

    Args:
        ious: (objects, max_clicks) IoU after 1, 2, ... clicks.
        target: The IoU to reach, in (0, 1].

    Example:
        >>> number_of_clicks(np.array([[0.5, 0.86, 0.95], [0.9, 0.2, 0.3], [0.1, 0.2, 0.3]]), 0.85).tolist()
        [2, 1, 3]
    """
    target = check_float(target, "IoU target", minimum=0.0, maximum=1.0, exclusive_minimum=True)
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2 or ious.shape[1] == 0:
        raise InvalidInputError(f"ious must have shape (objects, clicks), got {ious.shape}")
    reached = ious >= target
    return np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, ious.shape[1])


def _interval(samples: np.ndarray) -> list[float]:
    low, high = percentile_interval(samples)
    return [float(low), float(high)]


def summarize_strategy(
    ious: np.ndarray, *, resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """NoC@85/90 and mean IoU after 1..5 clicks of one strategy, each with a 95 % percentile-bootstrap interval.

    Args:
        ious: (objects, max_clicks) IoU after each click.
        resamples: Bootstrap resamples over objects (the same resamples for every strategy with one seed).
        seed: Seed of the resamples.

    Returns:
        ``{"objects", "noc": {"85": {"mean", "interval", "not_reached"}, ...}, "miou": {"1": {"mean", "interval"},
        ...}, "miou_curve": [mean IoU after 1..max_clicks]}``.
    """
    ious = np.asarray(ious, dtype=np.float64)
    count = ious.shape[0]
    summary: dict[str, Any] = {"objects": count, "noc": {}, "miou": {}}
    for target in NOC_TARGETS:
        clicks = number_of_clicks(ious, target).astype(np.float64)
        samples = bootstrap_statistics(
            lambda index, values=clicks: values[index].mean(), count, resamples=resamples, seed=seed
        )
        summary["noc"][f"{round(target * 100)}"] = {
            "mean": float(clicks.mean()),
            "interval": _interval(samples),
            "not_reached": int((ious < target).all(axis=1).sum()),
        }
    for clicks in MIOU_AT_CLICKS:
        if clicks > ious.shape[1]:
            break
        column = ious[:, clicks - 1]
        samples = bootstrap_statistics(
            lambda index, values=column: values[index].mean(), count, resamples=resamples, seed=seed
        )
        summary["miou"][str(clicks)] = {"mean": float(column.mean()), "interval": _interval(samples)}
    summary["miou_curve"] = [float(value) for value in ious.mean(axis=0)]
    return summary


def ask_when_needed(
    ious: np.ndarray, prompt_gaps: np.ndarray, thresholds: Sequence[float] = THRESHOLD_GRID, *, max_clicks: int = 5
) -> list[dict[str, float]]:
    """Mean IoU against clicks asked for when a click is asked only while the predicted prompt gap exceeds τ.

    Each object starts with its first click; after click k (k < ``max_clicks``) another is asked for only if the
    answer's predicted prompt gap exceeds τ; the object's IoU is that of its last answer. The baseline is asking
    everyone for the same number of clicks (mean IoU after k clicks, k - 1 asked for).

    Args:
        ious: (objects, clicks) IoU after each click.
        prompt_gaps: (objects, clicks) predicted prompt gap of the answer after each click.
        thresholds: τ values, each in [-0.5, 0.5].
        max_clicks: Most clicks an object gets.

    Returns:
        Per τ: ``{"threshold", "clicks_asked" (mean clicks asked for beyond the first), "asked_share" (share of
        objects asked at least once), "miou"}``.

    Example:
        >>> ious = np.array([[0.5, 0.9], [0.8, 0.8]])
        >>> gaps = np.array([[0.2, 0.0], [0.0, 0.0]])
        >>> [round(point["miou"], 2) for point in ask_when_needed(ious, gaps, [0.1, 0.3], max_clicks=2)]
        [0.85, 0.65]
    """
    ious = np.asarray(ious, dtype=np.float64)
    prompt_gaps = np.asarray(prompt_gaps, dtype=np.float64)
    if ious.shape != prompt_gaps.shape or ious.ndim != 2:
        raise InvalidInputError(f"ious {ious.shape} and prompt_gaps {prompt_gaps.shape} must both be (objects, clicks)")
    max_clicks = check_int(max_clicks, "max clicks", minimum=1, maximum=ious.shape[1])
    rows = np.arange(ious.shape[0])
    points = []
    for threshold in thresholds:
        threshold = check_threshold(threshold)
        # An object keeps clicking while every answer so far says another click would help.
        wants_more = np.cumprod(prompt_gaps[:, : max_clicks - 1] > threshold, axis=1)
        clicks = 1 + wants_more.sum(axis=1)
        points.append(
            {
                "threshold": threshold,
                "clicks_asked": float((clicks - 1).mean()),
                "asked_share": float((clicks > 1).mean()),
                "miou": float(ious[rows, clicks - 1].mean()),
            }
        )
    return points


def runs_by_strategy(runs: Sequence[ObjectRun]) -> dict[ClickStrategy, dict[str, np.ndarray]]:
    """Per strategy, (objects, clicks) arrays of ``ious`` and ``prompt_gaps``, objects in run order."""
    grouped: dict[ClickStrategy, dict[str, list[list[float]]]] = {}
    for run in runs:
        entry = grouped.setdefault(run.strategy, {"ious": [], "prompt_gaps": []})
        entry["ious"].append(run.ious)
        entry["prompt_gaps"].append(run.prompt_gaps)
    return {strategy: {key: np.asarray(rows) for key, rows in entry.items()} for strategy, entry in grouped.items()}


def summarize_runs(
    runs: Sequence[ObjectRun],
    *,
    gate_clicks: int = 5,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    thresholds: Sequence[float] = THRESHOLD_GRID,
) -> dict[str, Any]:
    """Every measure of a run, per strategy: :func:`summarize_strategy` plus the :func:`ask_when_needed` curve.

    Raises:
        InvalidInputError: No runs.
    """
    if not runs:
        raise InvalidInputError("no objects were simulated (an empty dataset, or images without objects?)")
    results: dict[str, Any] = {}
    for strategy, arrays in runs_by_strategy(runs).items():
        summary = summarize_strategy(arrays["ious"], resamples=resamples, seed=seed)
        clicks = min(gate_clicks, arrays["ious"].shape[1])
        summary["gate_clicks"] = clicks
        summary["ask_when_needed"] = ask_when_needed(
            arrays["ious"], arrays["prompt_gaps"], thresholds, max_clicks=clicks
        )
        results[str(strategy)] = summary
    return results
