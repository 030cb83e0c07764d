"""Store-based evaluation of three uses of usam's estimates: model cascade, mask choice, pseudo-label filter.

Rows come from a token store: the small model's rows (tokens, three masks' IoUs and SAM scores, entropies) and the
large model's rows of the same objects. The heads run on the small model's tokens once per mask (the mask token
that produced it, or the one before for as-released heads), exactly as :class:`usam.UncertainSAM` scores masks at
inference, so usam's pick is the mask with the highest predicted IoU of the small model's own size head.

- **Cascade** (use 1): objects escalate from the small to the large model in order of a measure; the curve is the
  mean IoU (``iou``, best of three, as the paper's model selection) over the fraction escalated (the cost).
  Measures: the ``model_gap`` head (highest first) and the small size head's predicted IoU (lowest first), both
  read on usam's pick as :class:`usam.uses.CascadeSAM` reads them, SAM's score of its pick (lowest first),
  ``h_std_sam_pick``, the entropy of SAM's pick (highest first; the store's ``h_std`` is of the best mask, which
  only the truth can choose), random (mean over orders) and the oracle (largest true gain first). The relative area
  is :func:`usam.metrics.relative_auc`: 0 % no escalation, 100 % the oracle.
- **Mask choice** (use 3): mean IoU of usam's pick, SAM's pick and the best of three; precision and recall of the
  flag "predicted task gap (on usam's pick) > 0.1" for the true ``task_gap > 0.1``.
- **Pseudo-labels** (use 4): every object's mask is SAM's pick; a measure keeps the most confident fraction
  (usam's predicted IoU of that mask, SAM's score, lowest ``h_std_sam_pick`` first, random, oracle = true IoU),
  and the curve is the precision of the kept masks (true IoU ≥ 0.5 and ≥ 0.75) over the fraction kept. A second
  usam row keeps usam's own pick by its predicted IoU. The relative area puts random at 0 % and the oracle at
  100 %.

Every number has a 95 % percentile interval over objects (:func:`usam.metrics.bootstrap_statistics`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam.errors import InvalidInputError
from usam.evaluation.rows import resolve_models, run_heads, store_models
from usam.evaluation.scenarios import json_ready
from usam.head_table import Pairing, size_head_name
from usam.heads import SIGNAL_INPUT, UncertaintyHeads, load_heads
from usam.metrics import (
    area_under_curve,
    bootstrap_statistics,
    corrected_counts,
    correction_curve,
    no_correction_curve,
    oracle_curve,
    percentile_interval,
    random_curve,
    relative_auc,
)
from usam.models import size_and_family
from usam.signals import signal_features
from usam.store import KEY_COLUMNS, SIGNAL_COLUMNS, StoreReader
from usam.training.loading import store_signals
from usam.validation import check_int

FRACTIONS = np.linspace(0.0, 1.0, 101)
"""Fractions escalated (cascade) or kept (pseudo-labels) at which curves are evaluated."""
PRECISION_THRESHOLDS = (0.5, 0.75)
"""True IoU a pseudo-label must reach to count as correct."""
TASK_GAP_FLAG = 0.1
"""The mask-choice flag is scored for a true task gap above this."""
RANDOM = "random"
ORACLE = "oracle"


@dataclasses.dataclass
class UseRows:
    """Per object (small and large rows joined), what the three uses need.

    Attributes:
        small_iou, large_iou: ``(N,)`` best-of-three IoU of each model.
        mask_ious, sam_scores: ``(N, 3)`` of the small model.
        predicted_iou: ``(N, 3)`` the small size head's predicted IoU per mask, or None without that head.
        head_values: Per loaded gap head, ``(N, 3)`` per mask.
        columns: Store columns ``task_gap``, ``h_std``, ``h_std_sam_pick`` (NaN where null).
        dropped: Objects without a large row or with non-finite tokens.
    """

    small_iou: np.ndarray
    large_iou: np.ndarray
    mask_ious: np.ndarray
    sam_scores: np.ndarray
    predicted_iou: np.ndarray | None
    head_values: dict[str, np.ndarray]
    columns: dict[str, np.ndarray]
    dropped: int

    @property
    def usam_pick(self) -> np.ndarray:
        """Index of usam's pick per object (SAM's pick without the size head)."""
        return self.sam_pick if self.predicted_iou is None else np.argmax(self.predicted_iou, axis=1)

    @property
    def sam_pick(self) -> np.ndarray:
        """Index of SAM's pick per object."""
        return np.argmax(self.sam_scores, axis=1)


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return values[np.arange(len(index)), index]


def read_use_rows(reader: StoreReader, heads: UncertaintyHeads, small: str, large: str | None) -> UseRows:
    """Read and join the rows of the small and the large model, and run the heads on each of the small's masks.

    Raises:
        InvalidInputError: The heads read tokens of another size than the store holds, or no object has rows of
            both models.
    """
    import pyarrow.compute as pc

    if heads.metadata.token_dim != reader.token_dim:
        raise InvalidInputError(
            f"the heads read tokens of {heads.metadata.token_dim} values, the store holds {reader.token_dim}"
        )
    wanted = ["task_gap", "h_std", "h_std_sam_pick"]
    present = [name for name in wanted if name in reader.columns]
    signal_columns: list[str] = []
    if heads.metadata.reads_signals:
        reader.check_columns(SIGNAL_COLUMNS, "the uses of heads that read signals")
        signal_columns = list(SIGNAL_COLUMNS)
    small_table = reader.read(
        [*KEY_COLUMNS, "iou", *present, "sam_scores", "mask_ious", "iou_token", "mask_tokens", *signal_columns],
        pc.field("model") == small,
    )
    large_iou: dict[tuple[str, str, str], float] = {}
    if large is not None:
        table = reader.read([*KEY_COLUMNS, "iou"], pc.field("model") == large)
        keys = zip(*(table.column(name).to_pylist() for name in ("dataset", "image_key", "object_id")), strict=True)
        large_iou = dict(zip(keys, table.column("iou").to_numpy(zero_copy_only=False).astype(float), strict=True))
    keys = list(
        zip(*(small_table.column(name).to_pylist() for name in ("dataset", "image_key", "object_id")), strict=True)
    )
    order = sorted(range(len(keys)), key=keys.__getitem__)  # the store's order is not guaranteed
    iou_token = reader.tokens(small_table, "iou_token", np.float32)
    mask_tokens = reader.tokens(small_table, "mask_tokens", np.float32)
    offset = 1 if heads.metadata.pairing == Pairing.TRUE else 0
    signals = store_signals(small_table) if signal_columns else None
    features = []
    for mask in range(3):
        parts = {"iou_token": iou_token, "mask_token": mask_tokens[:, mask + offset]}
        if signals is not None:
            # The mask's own signal vector, normalised like the predictor does (the same token as its mask token).
            token = torch.full((len(iou_token), 1), mask + offset, dtype=torch.long)
            parts[SIGNAL_INPUT] = heads.metadata.normalization.apply(signal_features(signals, token).numpy())
        features.append(np.concatenate([parts[name] for name in heads.metadata.inputs], axis=1))
    stacked = np.stack(features, axis=1)  # (N, 3, D)
    finite = np.isfinite(stacked).all(axis=(1, 2))
    outputs = run_heads(heads, np.nan_to_num(stacked.reshape(-1, stacked.shape[-1]))).reshape(len(heads.names), -1, 3)
    keep = np.array([finite[i] and (large is None or keys[i] in large_iou) for i in order], dtype=bool)
    chosen = np.asarray(order, dtype=np.int64)[keep]
    if chosen.size == 0:
        raise InvalidInputError(
            f"the store {reader.root} has no object with finite tokens of {small} and a row of {large}"
        )
    size = size_and_family(small)[0]
    own = size_head_name(size) if size else None
    values = {name: outputs[index][chosen] for index, name in enumerate(heads.names)}
    columns = {
        name: small_table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)[chosen] for name in present
    }
    return UseRows(
        small_iou=small_table.column("iou").to_numpy(zero_copy_only=False).astype(np.float64)[chosen],
        large_iou=np.array([large_iou.get(keys[i], np.nan) for i in chosen], dtype=np.float64),
        mask_ious=reader.tokens(small_table, "mask_ious", np.float64)[chosen],
        sam_scores=reader.tokens(small_table, "sam_scores", np.float64)[chosen],
        predicted_iou=values.get(own) if own else None,
        head_values={name: value for name, value in values.items() if name != own},
        columns=columns,
        dropped=len(keys) - int(chosen.size),
    )


@dataclasses.dataclass
class Interval:
    """A value and its 95 % percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float | None]:
        """Strict-JSON form."""
        return json_ready({"value": self.value, "low": self.low, "high": self.high})


def _interval(statistic: Callable[[np.ndarray], Any], count: int, resamples: int, seed: int) -> list[Interval]:
    value = np.atleast_1d(np.asarray(statistic(np.arange(count)), dtype=float))
    samples = bootstrap_statistics(statistic, count, resamples=resamples, seed=seed).reshape(resamples, -1)
    low, high = percentile_interval(samples)
    return [Interval(float(v), float(lo), float(hi)) for v, lo, hi in zip(value, low, high, strict=True)]


@dataclasses.dataclass
class UsesResult:
    """Curves and tables of the three uses; :meth:`to_json` is ``uses.json``.

    Attributes:
        small, large: The models.
        num_objects: Objects evaluated; ``dropped``: objects left out (no large row, non-finite tokens).
        cascade_curves: Measure -> mean IoU at each of :data:`FRACTIONS` escalated (plus ``none``).
        cascade_relative_auc: Measure -> relative AUC (%, 0 = no escalation, 100 = oracle).
        cascade_skipped: Measure -> why it was not scored.
        mask_choice: ``usam_pick``, ``sam_pick``, ``best_of_three`` mean IoU; ``flag_precision``, ``flag_recall``,
            ``flagged_fraction`` (absent without a ``task_gap`` head).
        pseudo_label_curves: Threshold key (``iou>=0.5``) -> measure -> precision at each fraction kept.
        pseudo_label_relative_area: Threshold key -> measure -> relative area (%, 0 = random, 100 = oracle).
        notes: Caveats.
    """

    small: str
    large: str | None
    num_objects: int
    dropped: int
    cascade_curves: dict[str, np.ndarray]
    cascade_relative_auc: dict[str, Interval]
    cascade_skipped: dict[str, str]
    mask_choice: dict[str, Interval]
    pseudo_label_curves: dict[str, dict[str, np.ndarray]]
    pseudo_label_relative_area: dict[str, dict[str, Interval]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        """Strict-JSON data (NaN as null)."""
        return json_ready(
            {
                "small_model": self.small,
                "large_model": self.large,
                "num_objects": self.num_objects,
                "dropped_objects": self.dropped,
                "fractions": FRACTIONS,
                "cascade": {
                    "cost": "fraction of objects escalated to the large model",
                    "accuracy": "mean IoU (best of three masks) over all objects",
                    "relative_auc_definition": "100 * (AUC - AUC_no_escalation) / (AUC_oracle - AUC_no_escalation)",
                    "curves": self.cascade_curves,
                    "relative_auc": {key: value.to_json() for key, value in self.cascade_relative_auc.items()},
                    "skipped": self.cascade_skipped,
                },
                "mask_choice": {
                    "flag": f"predicted task gap on usam's pick > {TASK_GAP_FLAG}, for true task_gap > {TASK_GAP_FLAG}",
                    **{key: value.to_json() for key, value in self.mask_choice.items()},
                },
                "pseudo_labels": {
                    "mask": "SAM's pick for every measure; usam_own_pick keeps usam's pick",
                    "relative_area_definition": "100 * (A - A_random) / (A_oracle - A_random), A = mean precision "
                    "over the fraction kept",
                    "curves": self.pseudo_label_curves,
                    "relative_area": {
                        key: {name: value.to_json() for name, value in table.items()}
                        for key, table in self.pseudo_label_relative_area.items()
                    },
                },
                "notes": self.notes,
            }
        )


def _cascade_measures(rows: UseRows) -> tuple[dict[str, tuple[np.ndarray, bool]], dict[str, str]]:
    """Measure -> (values, higher escalates first); and skipped measures with their cause."""
    pick = rows.usam_pick
    measures: dict[str, tuple[np.ndarray, bool]] = {}
    skipped: dict[str, str] = {}
    if "model_gap" in rows.head_values:
        measures["usam model_gap"] = (_at(rows.head_values["model_gap"], pick), True)
    else:
        skipped["usam model_gap"] = "the heads have no model_gap head"
    if rows.predicted_iou is not None:
        measures["usam predicted IoU"] = (_at(rows.predicted_iou, pick), False)
    else:
        skipped["usam predicted IoU"] = "the heads have no IoU head of the small model's size"
    measures["SAM score"] = (rows.sam_scores.max(axis=1), False)
    # The entropy of SAM's pick, the mask a user without usam gets: the store's h_std is that of the best of the
    # three masks, which only the truth can choose, so it would rank with knowledge no cascade has.
    entropy = rows.columns.get("h_std_sam_pick")
    if entropy is not None and np.isfinite(entropy).all():
        measures["entropy H_std"] = (entropy, True)
    else:
        skipped["entropy H_std"] = "the store has no h_std_sam_pick for some objects"
    return measures, skipped


def _precision_curve(correct: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Precision of the most confident fraction kept, at each of FRACTIONS (ties averaged; at 0, the first)."""
    gained = correction_curve(np.zeros(correct.size), correct, confidence, fractions=FRACTIONS).mean_iou
    kept = np.maximum(corrected_counts(FRACTIONS, correct.size), 1)
    precision = gained * correct.size / kept
    precision[0] = precision[1]  # keeping nothing has no precision; the curve starts at the first kept mask
    return precision


def _random_precision(correct: np.ndarray, seeds: int) -> np.ndarray:
    gained = random_curve(np.zeros(correct.size), correct, num_seeds=seeds, fractions=FRACTIONS).mean_iou
    precision = gained * correct.size / np.maximum(corrected_counts(FRACTIONS, correct.size), 1)
    precision[0] = precision[1]
    return precision


def evaluate_uses(
    store: str | Path | StoreReader,
    heads: str | Path | UncertaintyHeads,
    *,
    small: str = "tiny",
    large: str | None = None,
    seeds: int = 10,
    resamples: int = 1000,
    seed: int = 0,
) -> UsesResult:
    """Evaluate the cascade, mask choice and pseudo-label filter on a store (see the module's docstring).

    Args:
        store: A token store (folder or reader).
        heads: Heads (or their file) to evaluate.
        small: The small model: a size (``tiny``) or a model name in the store.
        large: The large model; default the large model of the small one's family.
        seeds: Random orders averaged for the random baseline.
        resamples: Bootstrap resamples for the intervals.
        seed: Seed of the bootstrap.

    Raises:
        InvalidInputError: Unknown models, no large model for the cascade, or no usable objects.
    """
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    heads = heads if isinstance(heads, UncertaintyHeads) else load_heads(heads)
    seeds = check_int(seeds, "seeds", minimum=1)
    resamples = check_int(resamples, "resamples", minimum=1)
    names = store_models(reader)
    models = resolve_models(small, names, reader.root)
    large_name = models.large if large is None else resolve_models(large, names, reader.root).evaluated
    if large_name is None:
        raise InvalidInputError(
            f"the store {reader.root} has no large model of {models.evaluated}'s family for the cascade; pass --large"
        )
    rows = read_use_rows(reader, heads, models.evaluated, large_name)
    count = rows.small_iou.size
    notes = []
    if rows.predicted_iou is None:
        notes.append("no IoU head of the small model's size: usam's pick falls back to SAM's pick")

    # Use 1: cascade.
    measures, skipped = _cascade_measures(rows)
    base, corrected = rows.small_iou, rows.large_iou

    def cascade_auc(index: np.ndarray) -> np.ndarray:
        b, c = base[index], corrected[index]
        none, oracle = no_correction_curve(b, fractions=FRACTIONS), oracle_curve(b, c, fractions=FRACTIONS)
        curves = [
            correction_curve(b, c, v[index], fractions=FRACTIONS, higher_is_uncertain=h) for v, h in measures.values()
        ]
        curves.append(random_curve(b, c, num_seeds=seeds, fractions=FRACTIONS))
        curves.append(oracle)
        return np.array([relative_auc(curve, none, oracle) for curve in curves])

    cascade_keys = [*measures, RANDOM, ORACLE]
    cascade_intervals = dict(zip(cascade_keys, _interval(cascade_auc, count, resamples, seed), strict=True))
    curves = {
        key: correction_curve(base, corrected, values, fractions=FRACTIONS, higher_is_uncertain=higher).mean_iou
        for key, (values, higher) in measures.items()
    }
    curves[RANDOM] = random_curve(base, corrected, num_seeds=seeds, fractions=FRACTIONS).mean_iou
    curves[ORACLE] = oracle_curve(base, corrected, fractions=FRACTIONS).mean_iou
    curves["none"] = no_correction_curve(base, fractions=FRACTIONS).mean_iou

    # Use 3: mask choice.
    usam_iou, sam_iou = _at(rows.mask_ious, rows.usam_pick), _at(rows.mask_ious, rows.sam_pick)
    best_iou = rows.mask_ious.max(axis=1)
    choice_keys = ["usam_pick", "sam_pick", "best_of_three"]
    statistics: list[Callable[[np.ndarray], float]] = [
        lambda i: usam_iou[i].mean(),
        lambda i: sam_iou[i].mean(),
        lambda i: best_iou[i].mean(),
    ]
    if "task_gap" in rows.head_values and "task_gap" in rows.columns:
        flagged = _at(rows.head_values["task_gap"], rows.usam_pick) > TASK_GAP_FLAG
        truth = rows.columns["task_gap"] > TASK_GAP_FLAG
        choice_keys += ["flag_precision", "flag_recall", "flagged_fraction"]
        statistics += [
            lambda i: (truth[i] & flagged[i]).sum() / flagged[i].sum() if flagged[i].any() else np.nan,
            lambda i: (truth[i] & flagged[i]).sum() / truth[i].sum() if truth[i].any() else np.nan,
            lambda i: flagged[i].mean(),
        ]
    else:
        notes.append("no task_gap head (or store column): the show-all-masks flag is not scored")
    mask_choice = dict(
        zip(choice_keys, _interval(lambda i: np.array([f(i) for f in statistics]), count, resamples, seed), strict=True)
    )

    # Use 4: pseudo-labels.
    confidences: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (confidence, true IoU of the kept mask)
    if rows.predicted_iou is not None:
        confidences["usam predicted IoU"] = (_at(rows.predicted_iou, rows.sam_pick), sam_iou)
        confidences["usam_own_pick"] = (_at(rows.predicted_iou, rows.usam_pick), usam_iou)
    confidences["SAM score"] = (rows.sam_scores.max(axis=1), sam_iou)
    entropy = rows.columns.get("h_std_sam_pick")
    if entropy is not None and np.isfinite(entropy).all():
        confidences["entropy H_std"] = (-entropy, sam_iou)
    pseudo_curves: dict[str, dict[str, np.ndarray]] = {}
    pseudo_area: dict[str, dict[str, Interval]] = {}
    for threshold in PRECISION_THRESHOLDS:
        key = f"iou>={threshold}"
        correct_of = {name: (true >= threshold).astype(float) for name, (_, true) in confidences.items()}
        sam_correct = (sam_iou >= threshold).astype(float)

        def areas(index: np.ndarray, correct_of=correct_of, sam_correct=sam_correct) -> np.ndarray:
            reference = sam_correct[index]
            random_area = area_under_curve(FRACTIONS, _random_precision(reference, seeds))
            oracle_area = area_under_curve(FRACTIONS, _precision_curve(reference, reference))
            out = []
            for name, (confidence, _) in confidences.items():
                area = area_under_curve(FRACTIONS, _precision_curve(correct_of[name][index], confidence[index]))
                gain = oracle_area - random_area
                out.append(100.0 * (area - random_area) / gain if gain > 1e-12 else np.nan)
            return np.array(out)

        pseudo_area[key] = dict(zip(confidences, _interval(areas, count, resamples, seed), strict=True))
        pseudo_curves[key] = {
            name: _precision_curve(correct_of[name], confidence) for name, (confidence, _) in confidences.items()
        }
        pseudo_curves[key][RANDOM] = _random_precision(sam_correct, seeds)
        pseudo_curves[key][ORACLE] = _precision_curve(sam_correct, sam_iou)
    return UsesResult(
        small=models.evaluated,
        large=large_name,
        num_objects=count,
        dropped=rows.dropped,
        cascade_curves=curves,
        cascade_relative_auc=cascade_intervals,
        cascade_skipped=skipped,
        mask_choice=mask_choice,
        pseudo_label_curves=pseudo_curves,
        pseudo_label_relative_area=pseudo_area,
        notes=notes,
    )
