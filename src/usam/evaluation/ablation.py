"""The inputs ablation: heads trained on each of the tokens, both, SAM2's scalar signals, and tokens with signals.

Variants: the IoU token only, the mask token only, both tokens, the signal vector only, tokens and signals. The
images of the store are split at random (seeded) into training and test images; for each variant the heads of the
four scenarios are trained from scratch with :func:`usam.training.train_heads` on the training images' rows and
scored by relative AUC on the test images' objects, next to the provided heads, SAM's score and random order on the
same objects. The signal variants need a store with signal columns (schema version 2); on an older store they are
listed as skipped, with the cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from usam.errors import InvalidInputError
from usam.evaluation.measures import Measure, MeasureKind
from usam.evaluation.rows import EvaluatedModels, Rows, run_heads
from usam.evaluation.scenarios import (
    ScenarioObjects,
    Status,
    finite_or_none,
    json_ready,
    ranking_scores,
    relative_aucs,
    values_of,
)
from usam.head_table import HEAD_NAMES, HEADS
from usam.heads import SIGNAL_INPUT, UncertaintyHeads
from usam.metrics import no_correction_curve, oracle_curve, random_curve
from usam.signals import SignalNormalization
from usam.training import HyperParameters, TrainingData, paper_hyper_parameters, train_heads

ABLATION_VARIANTS: dict[str, tuple[str, ...]] = {
    "iou_token": ("iou_token",),
    "mask_token": ("mask_token",),
    "both": ("iou_token", "mask_token"),
    "signals": (SIGNAL_INPUT,),
    "tokens+signals": ("iou_token", "mask_token", SIGNAL_INPUT),
}
"""The ablation's variants and what their heads read ("both" is the paper's tokens)."""

ABLATION_TEST_FRACTION = 0.3
"""Fraction of the images held out to score the ablation's heads (the rest trains them)."""
ABLATION_SEED = 0
"""Seed of the ablation's train/test split of the images and of its training."""
ABLATION_VALIDATION_FRACTION = 0.1
"""Fraction of the ablation's training images the trainer holds out to pick each head's best epoch."""
ABLATION_MIN_IMAGES = 4
"""Fewest images the ablation's split needs."""

HyperParameterChoice = HyperParameters | Mapping[str, HyperParameters] | None
"""Training of the ablation's heads: one set for all heads, one per head, or None for the paper's."""


@dataclasses.dataclass
class AblationScore:
    """Relative AUC of one ranking of a scenario's test objects."""

    num_objects: int
    relative_auc_percent: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        """The score as strict-JSON data (non-finite numbers as null)."""
        aucs = {key: finite_or_none(value) for key, value in self.relative_auc_percent.items()}
        return {"num_objects": self.num_objects, "relative_auc_percent": aucs}


@dataclasses.dataclass
class AblationScenario:
    """The ablation of one scenario: the head trained, its test objects and every variant's score."""

    status: Status
    reason: str | None = None
    head: str | None = None
    num_test_objects: int = 0
    scores: dict[str, AblationScore] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data."""
        if self.status is not Status.DONE:
            return {"status": str(self.status), "reason": self.reason}
        return {
            "status": str(self.status),
            "head": self.head,
            "num_test_objects": self.num_test_objects,
            "scores": {key: score.to_json() for key, score in self.scores.items()},
        }


@dataclasses.dataclass
class AblationResult:
    """The token ablation, or why it was not done.

    Attributes:
        status: Done, skipped (too few images, no targets) or failed (training failed).
        reason: Why it was not done, or None.
        protocol: How the images were split and the heads trained.
        variants: Per variant, the tokens read and each head's training record.
        scenarios: Per scenario, the scores.
        plot: File name of the plot, once written.
    """

    status: Status
    protocol: dict[str, Any]
    reason: str | None = None
    variants: dict[str, Any] = dataclasses.field(default_factory=dict)
    scenarios: dict[str, AblationScenario] = dataclasses.field(default_factory=dict)
    plot: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data."""
        data: dict[str, Any] = {"status": str(self.status), "protocol": json_ready(self.protocol)}
        if self.status is not Status.DONE:
            return {**data, "reason": self.reason}
        data |= {
            "variants": json_ready(self.variants),
            "scenarios": {name: entry.to_json() for name, entry in self.scenarios.items()},
        }
        if self.plot is not None:
            data["plot"] = self.plot
        return data


def check_hyper_parameters_type(hyper_parameters: object) -> None:
    """Refuse anything but HyperParameters, a mapping of head name to them, or None.

    Raises:
        InvalidInputError: For anything else.
    """
    if hyper_parameters is None or isinstance(hyper_parameters, HyperParameters):
        return
    if not isinstance(hyper_parameters, Mapping) or not all(
        isinstance(value, HyperParameters) for value in hyper_parameters.values()
    ):
        raise InvalidInputError(
            "ablation_hyper_parameters must be a usam.training.HyperParameters, a mapping from head name to "
            "HyperParameters, or None for the paper's"
        )


def _hyper_parameters(
    given: HyperParameterChoice, heads: list[str], rows: Rows
) -> tuple[dict[str, HyperParameters], str]:
    if isinstance(given, HyperParameters):
        return dict.fromkeys(heads, given), "given (one set for all heads)"
    if given is not None:
        missing = [name for name in heads if name not in given]
        if missing:
            raise InvalidInputError(
                f"ablation_hyper_parameters has no entry for head(s) {missing}; the ablation trains {heads}"
            )
        return {name: given[name] for name in heads}, "given (per head)"
    datasets = sorted(set(rows.dataset.tolist()))
    for name in datasets if len(datasets) == 1 else []:
        with contextlib.suppress(InvalidInputError):
            return paper_hyper_parameters(name, heads), f"paper defaults for {name}"
    return paper_hyper_parameters("coco", heads), "paper defaults for coco (the store's dataset has none)"


def _split_images(names: np.ndarray) -> tuple[np.ndarray, int]:
    """Seeded split of unique image names: ``(is_test per name, number of distinct images)``."""
    unique, index = np.unique(names, return_inverse=True)
    num_test = max(1, round(ABLATION_TEST_FRACTION * unique.size))
    is_test_image = np.zeros(unique.size, dtype=bool)
    is_test_image[np.random.default_rng(ABLATION_SEED).permutation(unique.size)[:num_test]] = True
    return is_test_image[index.reshape(-1)], int(unique.size)


def _primary_head(measures: list[Measure]) -> Measure | None:
    """The measure of the head a scenario's ablation trains: its first head measure."""
    return next((measure for measure in measures if measure.kind is MeasureKind.USAM_HEAD), None)


def run_ablation(
    rows: Rows,
    scenario_objects: Mapping[str, ScenarioObjects],
    scenario_measures: Mapping[str, list[Measure]],
    scenario_base_models: Mapping[str, str],
    models: EvaluatedModels,
    heads: UncertaintyHeads,
    hyper_parameters: HyperParameterChoice,
    fractions: np.ndarray,
    seeds: int,
    progress: bool,
) -> AblationResult:
    """Train the scenarios' heads on each token variant on training images; score them on test images.

    Args:
        rows: The store's rows, read with their features.
        scenario_objects: Objects of each evaluated scenario.
        scenario_measures: Measures of each scenario; the first head measure names the head that is trained.
        scenario_base_models: The model whose rows each scenario ranks (and its head learns from).
        models: The models of the evaluation.
        heads: The provided heads (their pairing is used for training too).
        hyper_parameters: Training of the ablation's heads.
        fractions: Fractions of objects corrected at which curves are evaluated.
        seeds: Random orders averaged for the random baseline.
        progress: Show progress bars.
    """
    tiny = models.tiny
    protocol: dict[str, Any] = {
        "split": "by image, seeded",
        "test_fraction": ABLATION_TEST_FRACTION,
        "seed": ABLATION_SEED,
        "validation_fraction_of_training_images": ABLATION_VALIDATION_FRACTION,
        "pairing": str(heads.metadata.pairing),
        "rows": f"each head learns from the training images' rows of the model whose rows it ranks: {models.evaluated}"
        + (f", and {tiny} for model_gap (the base of model selection)" if tiny not in (None, models.evaluated) else ""),
    }
    token_row_indices = np.flatnonzero(rows.token_rows >= 0)
    is_test_row = np.zeros(rows.model.size, dtype=bool)
    is_test_token_row, num_images = _split_images(rows.image_names(token_row_indices))
    is_test_row[token_row_indices] = is_test_token_row
    protocol["images"] = num_images
    if num_images < ABLATION_MIN_IMAGES:
        reason = f"the store has {num_images} image(s); the ablation's split needs {ABLATION_MIN_IMAGES}"
        return AblationResult(Status.SKIPPED, protocol, reason)
    protocol["test_images"] = len(set(rows.image_names(token_row_indices[is_test_token_row]).tolist()))
    protocol["train_images"] = num_images - protocol["test_images"]

    # Which head each scenario's ablation trains, and on the training rows of which model.
    primary = {name: _primary_head(scenario_measures[name]) for name in scenario_objects}
    training_rows = np.flatnonzero(~is_test_row & (rows.token_rows >= 0) & ~rows.nonfinite_tokens)
    targets: dict[str, np.ndarray] = {}
    for name, measure in primary.items():
        if measure is None:
            continue
        head = measure.heads[0]
        values = np.full(training_rows.size, np.nan)
        own = rows.model[training_rows] == scenario_base_models[name]
        column = rows.values[HEADS[head].target_column][training_rows]
        values[own] = HEADS[head].training_target(column[own])
        if np.isfinite(values).any():
            targets[head] = values
    trained_heads = [name for name in HEAD_NAMES if name in targets]
    if not trained_heads:
        return AblationResult(Status.SKIPPED, protocol, "no head has training targets")
    hyper, hyper_source = _hyper_parameters(hyper_parameters, trained_heads, rows)
    protocol["hyper_parameters"] = {name: hyper[name].to_dict() for name in trained_heads}
    protocol["hyper_parameter_source"] = hyper_source

    if rows.features is None:
        raise ValueError("the rows were read without features; read them with keep_features=True")
    token_dim = heads.metadata.token_dim
    token_slices = {"iou_token": slice(0, token_dim), "mask_token": slice(token_dim, 2 * token_dim)}
    variant_heads: dict[str, dict[str, np.ndarray]] = {}
    variants: dict[str, Any] = {}
    for variant, inputs in ABLATION_VARIANTS.items():
        normalization = None
        parts = [rows.features[:, token_slices[part]] for part in inputs if part != SIGNAL_INPUT]
        if SIGNAL_INPUT in inputs:
            if rows.signals is None:
                variants[variant] = {
                    "inputs": list(inputs),
                    "status": str(Status.SKIPPED),
                    "reason": "the store has no signal columns (schema version 1); extract it again with usam extract",
                }
                continue
            # Standardised with the training rows' statistics, as training from a store does.
            normalization = SignalNormalization.fit(rows.signals[rows.token_rows[training_rows]])
            parts.append(normalization.apply(rows.signals))
        features = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        data = TrainingData.from_arrays(
            features[rows.token_rows[training_rows]],
            rows.image_names(training_rows),
            {name: targets[name] for name in trained_heads},
            inputs=inputs,
            pairing=heads.metadata.pairing,
            source={"source": "usam.evaluation inputs ablation", "variant": variant},
            token_dim=token_dim,
            signal_normalization=None if normalization is None else normalization.to_dict(),
        )
        try:
            module, report = train_heads(
                data,
                hyper_parameters=hyper,
                seed=ABLATION_SEED,
                validation_fraction=ABLATION_VALIDATION_FRACTION,
                progress=progress,
            )
        except InvalidInputError as error:
            return AblationResult(Status.FAILED, protocol, f"training the {variant} heads failed: {error}")
        outputs = run_heads(module, np.ascontiguousarray(features))
        values_per_head = {}
        for index, name in enumerate(module.names):
            column = np.full(rows.model.size, np.nan)
            column[token_row_indices] = outputs[index][rows.token_rows[token_row_indices]]
            column[rows.nonfinite_tokens] = np.nan
            values_per_head[name] = column
        variant_heads[variant] = values_per_head
        variants[variant] = {
            "inputs": list(inputs),
            "training": {
                name: {
                    "best_epoch": entry["best_epoch"],
                    "train_rows": entry["train_rows"],
                    "validation_rows": entry["validation_rows"],
                    "validation": entry["validation"],
                }
                for name, entry in report["heads"].items()
            },
        }

    scenarios = {
        name: _score_scenario(objects, primary[name], scenario_measures[name], variant_heads, is_test_row, rows,
                              targets, fractions, seeds)
        for name, objects in scenario_objects.items()
    }  # fmt: skip
    return AblationResult(Status.DONE, protocol, variants=variants, scenarios=scenarios)


def _score_scenario(
    objects: ScenarioObjects,
    head_measure: Measure | None,
    measures: list[Measure],
    variant_heads: Mapping[str, Mapping[str, np.ndarray]],
    is_test_row: np.ndarray,
    rows: Rows,
    targets: Mapping[str, np.ndarray],
    fractions: np.ndarray,
    seeds: int,
) -> AblationScenario:
    head = head_measure.heads[0] if head_measure is not None else None
    if head_measure is None or head not in targets:
        return AblationScenario(Status.SKIPPED, f"no training targets for {head}")
    on_test = is_test_row[objects.base_rows]
    if not on_test.any():
        return AblationScenario(Status.SKIPPED, "no object of this scenario is on a test image")
    test_rows = objects.base_rows[on_test]
    base, corrected = objects.base_iou[on_test], objects.corrected_iou[on_test]

    def score(values: np.ndarray, higher: bool) -> AblationScore:
        num_objects, aucs, _ = ranking_scores(base, corrected, values, higher, fractions)
        return AblationScore(num_objects, aucs)

    higher = head_measure.higher_is_uncertain
    scores = {variant: score(values[head][test_rows], higher) for variant, values in variant_heads.items()}
    provided = values_of(head_measure, rows, test_rows)
    if provided is not None and not np.all(np.isnan(provided)):
        scores["provided_heads"] = score(provided, higher)
    sam_score = next(measure for measure in measures if measure.kind is MeasureKind.SAM_SCORE)
    scores["sam_score"] = score(values_of(sam_score, rows, test_rows), sam_score.higher_is_uncertain)
    none = no_correction_curve(base, fractions=fractions)
    oracle = oracle_curve(base, corrected, fractions=fractions)
    random = random_curve(base, corrected, num_seeds=seeds, fractions=fractions)
    scores["random"] = AblationScore(int(base.size), relative_aucs(random, none, oracle))
    return AblationScenario(Status.DONE, head=head, num_test_objects=int(base.size), scores=scores)
