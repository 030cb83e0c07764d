"""Seconds per object of the model cascade against the small and the large model alone, and, on the test-bed, accuracy.

Random-weight mode (the default): sam2.1 tiny and large with random weights and random heads on one image: small
only, large only, and the cascade at a few thresholds of ``iou:τ`` (the share escalated grows with τ). Each
configuration encodes the image and predicts the objects, so the cascade pays the large encoding only when
something escalates. With random weights the accuracy means nothing: this mode measures cost only.

    python benchmarks/cascade_speed.py [--objects 8] [--image-size 1024] [--repeats 3]

Test-bed mode: the trained test-bed's ``testbed-tiny`` (``models/tiny-early``) and ``testbed-large`` on the first N
held-out scenes, one click per target object at its center (:func:`usam.extraction.prompts.center_point`, the
extraction's single-click prompt), all objects of a scene in one batched call as ``usam predict`` makes it:

    python benchmarks/cascade_speed.py --testbed DIR --heads DIR/heads/seed-0-tokens.safetensors \\
        [--scenes 200] [--fractions 0 0.25 0.5 0.75 1] [--thresholds model-gap:0.05 iou:0.7 ...] [--out FILE.json]

Configurations: small only, large only, the cascade (:class:`usam.uses.CascadeSAM`) at several thresholds of
``model-gap:τ`` and ``iou:τ``, and the oracle (escalates exactly the objects whose answer the large model improves,
run with the same calls as the cascade). Unless ``--thresholds`` names them, each rule's thresholds are read off an
untimed first pass (which also warms both models up) so that they escalate the ``--fractions`` of the objects.
Every configuration encodes each scene itself (the cascade encodes with the large model only when an object of the
scene escalates); the configurations take turns scene by scene, so load on the machine touches all alike. Seconds
count ``set_image`` and ``predict`` only.

Accuracy is the IoU with the truth of the mask the user gets: the answering model's pick by its own predicted IoU
(``usam predict``'s ``usam_pick``, :func:`usam.uses.choose_masks`; SAM's pick for a model without its IoU head) —
the small model's ``iou_tiny``, the large model's ``iou_large``. The JSON also holds the best of the three masks.
mIoU intervals are 95 % percentile bootstrap intervals over objects; "oracle@%" is the oracle's mIoU at the same
share escalated (:func:`usam.metrics.oracle_curve`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usam import UncertainSAM, random_heads, sam2_adapter
from usam.errors import HeadsFileError, UsamError
from usam.extraction.prompts import center_point, positive_labels
from usam.extraction.targets import mask_ious
from usam.head_table import HEADS
from usam.metrics import bootstrap_statistics, oracle_curve, percentile_interval
from usam.uses import CascadeSAM, Escalation, EscalationRule, choose_masks, object_prediction

DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Shares of the objects the chosen thresholds of each rule escalate."""
SMALL_ONLY, LARGE_ONLY, ORACLE = "small only", "large only", "oracle"


def build(name: str, image_size: int, seed: int) -> UncertainSAM:
    overrides = [] if image_size == 1024 else sam2_adapter.small_model_overrides(image_size, small_trunk=False)
    model = sam2_adapter.build_sam2_model(name, device="cpu", random_weights=True, seed=seed, hydra_overrides=overrides)
    heads = random_heads(["iou_tiny", "iou_large", "model_gap"], seed=seed, sam2_version="sam2.1")
    return UncertainSAM(sam2_adapter.make_image_predictor(model), heads)


def random_weight_main(args: argparse.Namespace) -> None:
    """Cost only: random weights on one random image."""
    rng = np.random.default_rng(0)
    image = (rng.random((768, 1024, 3)) * 255).astype(np.uint8)
    points = rng.uniform([0, 0], [1023, 767], (args.objects, 1, 2)).astype(np.float32)
    labels = np.ones((args.objects, 1), np.int32)
    tiny, large = build("sam2.1-tiny", args.image_size, 0), build("sam2.1-large", args.image_size, 1)

    def timed(run) -> tuple[float, float]:
        times, share = [], 0.0
        for _ in range(args.repeats):
            start = time.perf_counter()
            share = run()
            times.append(time.perf_counter() - start)
        return statistics.median(times) / args.objects, share

    def alone(model: UncertainSAM) -> float:
        model.set_image(image)
        model.predict(point_coords=points, point_labels=labels)
        return 0.0

    rows = [("small only", *timed(lambda: alone(tiny))), ("large only", *timed(lambda: alone(large)))]
    for threshold in (0.0, 0.4, 0.5, 0.6, 1.0):
        cascade = CascadeSAM(tiny, large, f"iou:{threshold}")

        def run(cascade=cascade) -> float:
            cascade.set_image(image)
            return cascade.predict(point_coords=points, point_labels=labels).escalated_fraction

        rows.append((f"cascade iou:{threshold}", *timed(run)))
    small_cost = rows[0][1]
    print(f"{args.objects} objects, {args.image_size} px, median of {args.repeats} (random weights: cost only)")
    for name, seconds, share in rows:
        print(f"{name:>20}: {seconds:.3f} s/object ({seconds / small_cost:.2f}x small), escalated {share:.0%}")


# ---------------------------------------------------------------------------------------------- test-bed mode


@dataclasses.dataclass
class Scene:
    """One image and its target objects, prompted by one center click each."""

    image: np.ndarray
    points: np.ndarray  # (B, 1, 2) float32
    labels: np.ndarray  # (B, 1) int32
    truth: np.ndarray  # (B, H, W) bool


def scenes_of(samples: Iterable[Any]) -> list[Scene]:
    """The scenes of dataset samples (objects in sorted id order, as extraction orders them); empty ones dropped."""
    scenes = []
    for sample in samples:
        object_ids = sorted(sample.masks)
        if not object_ids:
            continue
        points = np.stack([center_point(sample.masks[object_id])[None] for object_id in object_ids])
        scenes.append(
            Scene(
                image=sample.image,
                points=points.astype(np.float32),
                labels=np.stack([positive_labels(1) for _ in object_ids]),
                truth=np.stack([np.asarray(sample.masks[object_id], dtype=bool) for object_id in object_ids]),
            )
        )
    return scenes


def user_ious(prediction: Any, model: UncertainSAM, truth: np.ndarray) -> tuple[float, float]:
    """IoU of the mask the user gets (the model's pick by its own predicted IoU) and of the best of the masks.

    Args:
        prediction: One object's prediction (unbatched).
        model: The model that made it (its own IoU head picks; SAM's pick without one).
        truth: ``(H, W)`` the object's true mask.
    """
    ious = mask_ious(prediction.masks, truth)
    try:
        pick = int(choose_masks(prediction, model).index)
    except HeadsFileError:
        pick = int(np.argmax(prediction.sam_scores))
    return float(ious[pick]), float(ious.max())


@dataclasses.dataclass
class Configuration:
    """One way to answer the objects: a model alone, the cascade at one threshold, or the oracle."""

    name: str
    escalation: Escalation | None = None  # the cascade's rule; None for the others
    target_fraction: float | None = None  # the share the threshold was chosen to escalate


@dataclasses.dataclass
class Measured:
    """Per object (all scenes in order) what one configuration gave, and the seconds it took in all."""

    configuration: Configuration
    seconds: float
    escalated: np.ndarray
    user_iou: np.ndarray
    best_iou: np.ndarray


def _run_small_and_large(
    small: UncertainSAM, large: UncertainSAM, scene: Scene, escalated: np.ndarray
) -> tuple[float, list[tuple[Any, UncertainSAM]]]:
    """Seconds and per-object answers of: small for all, large (encoding once) for the ``escalated`` objects."""
    start = time.perf_counter()
    small.set_image(scene.image)
    small_prediction = small.predict(point_coords=scene.points, point_labels=scene.labels)
    chosen = np.flatnonzero(escalated)
    large_prediction = None
    if chosen.size:
        large.set_image(scene.image)
        large_prediction = large.predict(point_coords=scene.points[chosen], point_labels=scene.labels[chosen])
    seconds = time.perf_counter() - start
    answers = []
    for index in range(len(scene.points)):
        if escalated[index]:
            position = int(np.count_nonzero(escalated[:index]))
            answers.append((object_prediction(large_prediction, position), large))
        else:
            answers.append((object_prediction(small_prediction, index), small))
    return seconds, answers


def _run_configuration(
    configuration: Configuration,
    small: UncertainSAM,
    large: UncertainSAM,
    scene: Scene,
    oracle_escalates: np.ndarray | None,
) -> tuple[float, np.ndarray, list[tuple[Any, UncertainSAM]]]:
    """Seconds, escalated flags and per-object (prediction, answering model) of one configuration on one scene."""
    count = len(scene.points)
    if configuration.escalation is not None:
        cascade = CascadeSAM(small, large, configuration.escalation)
        start = time.perf_counter()
        cascade.set_image(scene.image)
        result = cascade.predict(point_coords=scene.points, point_labels=scene.labels)
        seconds = time.perf_counter() - start
        answers = [(result.answer(index), large if result.escalated[index] else small) for index in range(count)]
        return seconds, np.asarray(result.escalated, dtype=bool), answers
    if configuration.name == ORACLE:
        if oracle_escalates is None:
            raise ValueError("the oracle needs the objects it escalates")
        seconds, answers = _run_small_and_large(small, large, scene, oracle_escalates)
        return seconds, oracle_escalates, answers
    model = large if configuration.name == LARGE_ONLY else small
    start = time.perf_counter()
    model.set_image(scene.image)
    prediction = model.predict(point_coords=scene.points, point_labels=scene.labels)
    seconds = time.perf_counter() - start
    escalated = np.full(count, configuration.name == LARGE_ONLY)
    return seconds, escalated, [(object_prediction(prediction, index), model) for index in range(count)]


def measure(
    small: UncertainSAM,
    large: UncertainSAM,
    scenes: Sequence[Scene],
    configurations: Sequence[Configuration],
    oracle_escalates: np.ndarray | None = None,
) -> list[Measured]:
    """Run every configuration on every scene, taking turns scene by scene, and score the masks the user gets.

    Args:
        small, large: The cascade's models.
        scenes: The scenes.
        configurations: What to run.
        oracle_escalates: Per object (scenes in order), whether the oracle escalates it (needed for an oracle).
    """
    seconds = np.zeros(len(configurations))
    escalated: list[list[np.ndarray]] = [[] for _ in configurations]
    ious: list[list[tuple[float, float]]] = [[] for _ in configurations]
    offset = 0
    for scene in scenes:
        count = len(scene.points)
        oracle_part = None if oracle_escalates is None else oracle_escalates[offset : offset + count]
        for index, configuration in enumerate(configurations):
            spent, flags, answers = _run_configuration(configuration, small, large, scene, oracle_part)
            seconds[index] += spent
            escalated[index].append(flags)
            ious[index].extend(user_ious(prediction, model, truth) for (prediction, model), truth in zip(
                answers, scene.truth, strict=True
            ))  # fmt: skip
        offset += count
    return [
        Measured(
            configuration=configuration,
            seconds=float(seconds[index]),
            escalated=np.concatenate(escalated[index]),
            user_iou=np.array([pair[0] for pair in ious[index]]),
            best_iou=np.array([pair[1] for pair in ious[index]]),
        )
        for index, configuration in enumerate(configurations)
    ]


@dataclasses.dataclass
class Probe:
    """The untimed first pass: per object both models' user IoU and each rule's decision estimate."""

    small_iou: np.ndarray
    large_iou: np.ndarray
    estimates: dict[EscalationRule, np.ndarray]

    @property
    def oracle_escalates(self) -> np.ndarray:
        """The objects whose answer the large model improves."""
        return self.large_iou > self.small_iou


def never_escalating(rule: EscalationRule) -> Escalation:
    """The rule's threshold that escalates nothing (the probe reads estimates through it)."""
    if rule is EscalationRule.MODEL_GAP:
        return Escalation(rule, HEADS["model_gap"].output_offset)
    return Escalation(rule, 0.0)


def probe(small: UncertainSAM, large: UncertainSAM, scenes: Sequence[Scene], rules: Sequence[EscalationRule]) -> Probe:
    """Both models alone on every scene (which also warms them up) and each rule's estimate per object."""
    cascades = {rule: CascadeSAM(small, large, never_escalating(rule)) for rule in rules}
    estimates: dict[EscalationRule, list[np.ndarray]] = {rule: [] for rule in rules}
    ious: dict[str, list[float]] = {SMALL_ONLY: [], LARGE_ONLY: []}
    for scene in scenes:
        for name, model in ((SMALL_ONLY, small), (LARGE_ONLY, large)):
            model.set_image(scene.image)
            prediction = model.predict(point_coords=scene.points, point_labels=scene.labels)
            for index, truth in enumerate(scene.truth):
                ious[name].append(user_ious(object_prediction(prediction, index), model, truth)[0])
            if model is small:
                for rule, cascade in cascades.items():
                    estimates[rule].append(cascade.decision_estimate(prediction)[1])
    return Probe(
        small_iou=np.array(ious[SMALL_ONLY]),
        large_iou=np.array(ious[LARGE_ONLY]),
        estimates={rule: np.concatenate(values) for rule, values in estimates.items()},
    )


def threshold_for_fraction(rule: EscalationRule, estimates: np.ndarray, fraction: float) -> Escalation:
    """The rule's threshold that escalates ``round(fraction · N)`` of these estimates (fewer where values tie).

    ``model-gap`` escalates the largest estimates (above τ), ``iou`` the smallest (below τ).
    """
    ordered = np.sort(np.asarray(estimates, dtype=np.float64))
    count = len(ordered)
    wanted = int(np.clip(np.floor(fraction * count + 0.5), 0, count))
    if rule is EscalationRule.MODEL_GAP:
        bound = HEADS["model_gap"].output_offset
        value = ordered[count - wanted - 1] if wanted < count else np.nextafter(ordered[0], -np.inf)
        return Escalation(rule, float(np.clip(value, -bound, bound)))
    value = ordered[wanted] if wanted < count else np.nextafter(ordered[-1], np.inf)
    return Escalation(rule, float(np.clip(value, 0.0, 1.0)))


def cascade_label(escalation: Escalation) -> str:
    """The table's name of the cascade at one rule and threshold, as ``--escalate`` writes it."""
    return f"cascade {escalation.rule}:{escalation.threshold:.4g}"


def configurations_for(
    probed: Probe, fractions: Sequence[float], thresholds: Sequence[Escalation] = ()
) -> list[Configuration]:
    """Small only, large only, the cascade at the given thresholds (else at each rule's fractions), the oracle."""
    cascades = [Configuration(cascade_label(escalation), escalation) for escalation in thresholds]
    if not thresholds:
        for rule, estimates in probed.estimates.items():
            for fraction in fractions:
                escalation = threshold_for_fraction(rule, estimates, fraction)
                cascades.append(Configuration(cascade_label(escalation), escalation, fraction))
    return [Configuration(SMALL_ONLY), Configuration(LARGE_ONLY), *cascades, Configuration(ORACLE)]


def _interval(values: np.ndarray, resamples: int) -> dict[str, float]:
    samples = bootstrap_statistics(lambda index: values[index].mean(), len(values), resamples=resamples, seed=0)
    low, high = percentile_interval(samples)
    return {"value": float(values.mean()), "low": float(low), "high": float(high)}


def summarize(measured: Sequence[Measured], resamples: int) -> list[dict[str, Any]]:
    """One row per configuration: share escalated, mIoU with its interval, seconds per object, cost ratio."""
    small_iou = next(row.user_iou for row in measured if row.configuration.name == SMALL_ONLY)
    large_iou = next(row.user_iou for row in measured if row.configuration.name == LARGE_ONLY)
    small_seconds = next(row.seconds for row in measured if row.configuration.name == SMALL_ONLY)
    rows = []
    for row in measured:
        objects = len(row.user_iou)
        fraction = float(row.escalated.mean())
        oracle = oracle_curve(small_iou, large_iou, fractions=np.array([fraction])).mean_iou[0]
        escalation = row.configuration.escalation
        rows.append(
            {
                "configuration": row.configuration.name,
                "rule": None if escalation is None else str(escalation.rule),
                "threshold": None if escalation is None else escalation.threshold,
                "target_fraction": row.configuration.target_fraction,
                "objects": objects,
                "escalated_fraction": fraction,
                "miou": _interval(row.user_iou, resamples),
                "miou_best_of_three": _interval(row.best_iou, resamples),
                "oracle_miou_at_fraction": float(oracle),
                "seconds_per_object": row.seconds / objects,
                "seconds_ratio_to_small": row.seconds / small_seconds,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table."""
    header = (
        f"{'configuration':<28} {'escalated':>9} {'mIoU [95 % CI]':>25} {'oracle@%':>8} {'s/object':>9} {'x small':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        miou = row["miou"]
        lines.append(
            f"{row['configuration']:<28} {row['escalated_fraction']:>9.1%} "
            f"{miou['value']:>8.4f} [{miou['low']:.4f}, {miou['high']:.4f}] {row['oracle_miou_at_fraction']:>8.4f} "
            f"{row['seconds_per_object']:>9.4f} {row['seconds_ratio_to_small']:>7.2f}"
        )
    return "\n".join(lines)


def run_testbed(
    small: UncertainSAM,
    large: UncertainSAM,
    scenes: Sequence[Scene],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    thresholds: Sequence[Escalation] = (),
    resamples: int = 1000,
) -> list[dict[str, Any]]:
    """Probe, then measure every configuration on the scenes; the summarized rows (see :func:`summarize`)."""
    rules = [rule for rule in EscalationRule if not thresholds or rule in {item.rule for item in thresholds}]
    probed = probe(small, large, scenes, rules)
    configurations = configurations_for(probed, fractions, thresholds)
    return summarize(measure(small, large, scenes, configurations, probed.oracle_escalates), resamples)


def testbed_main(args: argparse.Namespace) -> None:
    """Load the test-bed's models and scenes, measure, print the table and write the JSON."""
    from usam.datasets import open_dataset
    from usam.files import write_json_atomically
    from usam.heads import load_heads
    from usam.testbed.pipeline import MODEL_NAMES, TestbedPaths

    paths = TestbedPaths(Path(args.testbed).expanduser())
    heads = load_heads(args.heads)
    small = UncertainSAM.from_pretrained(paths.card("tiny-early"), heads, device=args.device)
    large = UncertainSAM.from_pretrained(paths.card("large"), heads, device=args.device)
    count = 4 if args.quick and args.scenes is None else (args.scenes or 200)
    scenes = scenes_of(open_dataset("folder", paths.scenes("test"), "test", limit=count))
    thresholds = [Escalation.parse(spec) for spec in args.thresholds]
    resamples = 100 if args.quick else 1000
    rows = run_testbed(small, large, scenes, fractions=args.fractions, thresholds=thresholds, resamples=resamples)
    objects = rows[0]["objects"]
    print(
        f"{MODEL_NAMES['tiny-early']} -> {MODEL_NAMES['large']}, {len(scenes)} test scenes, {objects} objects "
        f"(one center click each), heads {args.heads}; mIoU of the mask the user gets (the answering model's pick "
        "by its own predicted IoU)"
    )
    print(format_table(rows))
    if args.out:
        context = {
            "testbed": str(paths.root), "heads": str(args.heads), "scenes": len(scenes), "objects": objects,
            "small": MODEL_NAMES["tiny-early"], "large": MODEL_NAMES["large"], "bootstrap_resamples": resamples,
        }  # fmt: skip
        print(f"wrote {write_json_atomically({'context': context, 'rows': rows}, args.out)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=8, help="random-weight mode: objects on the image")
    parser.add_argument("--image-size", type=int, default=1024, help="random-weight mode: the models' input size")
    parser.add_argument("--repeats", type=int, default=3, help="random-weight mode: timed repeats (median)")
    parser.add_argument("--testbed", help="test-bed mode: a folder made by `usam testbed build`")
    parser.add_argument("--heads", help="test-bed mode: heads with model_gap, iou_tiny and iou_large")
    parser.add_argument("--scenes", type=int, default=None, help="test-bed mode: first N test scenes (200)")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--thresholds", nargs="+", default=[], help="RULE:τ specs instead of --fractions")
    parser.add_argument("--quick", action="store_true", help="test-bed mode: 4 scenes, 100 bootstrap resamples")
    parser.add_argument("--device", default=None, help="test-bed mode: torch device (CUDA if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", help="test-bed mode: write the rows as JSON")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.testbed is None:
        random_weight_main(args)
        return
    if args.heads is None:
        parser.error("--testbed needs --heads (e.g. DIR/heads/seed-0-tokens.safetensors)")
    try:
        testbed_main(args)
    except UsamError as error:  # a missing folder, card or head: one line, as usam's CLI says it
        parser.exit(2, f"cascade_speed: error: {error}\n")


if __name__ == "__main__":
    main()
