"""The paper's evaluation of uncertainty estimates on a token store: correction curves, correlations, ablation.

:func:`run_evaluation` reads the rows of one SAM2 size from a token store (:mod:`usam.store`), runs the heads
of a heads file on them and writes into an output folder ``report.md`` (Markdown), ``results.json`` (every
number, curves included) and PNG plots:

* **Correction scenarios** (:data:`usam.metrics.CORRECTION_SCENARIOS`). Objects are ranked from most to least
  uncertain by a measure, the top fraction r is corrected, and the mean IoU over all objects is plotted against
  r. Each measure is scored by its relative AUC (:func:`usam.metrics.relative_auc`): 0 % is no correction,
  100 % the oracle, which corrects in order of the true gain. It is computed over r in [0, 1]
  (``"r_0_1"``) and over r in [0, 0.5] (``"r_0_0.5"``, the regime of correcting at most half of the objects).
* **Correlations** (the paper's Table 5): Pearson correlation between the true IoU and gaps, SAM's score, the
  entropies and the heads, on the rows of the evaluated model.
* **Token ablation** (optional): heads trained on the IoU token only, the mask token only and both, scored by
  relative AUC per scenario.

Rows and values of each scenario
--------------------------------
An object is a ``(dataset, image_key, object_id)`` triple. *Model selection* joins the tiny model's row of an
object (base IoU ``iou``, and every measure) with the large model's row (corrected IoU ``iou``), both of the
evaluated model's SAM2 version, whatever size is evaluated; objects lacking either row are dropped and counted.
The other three scenarios use the evaluated model's rows alone: *prompt refinement* ``iou`` ->
``iou_dense_prompt``, *task supervision* ``unsupervised_iou`` -> ``iou``, *segmentation uncertainty* ``iou``
-> 1.

The mask that is evaluated is the one whose IoU is the base IoU. For ``iou`` that is the best of the three
multimask outputs (``argmax(mask_ious)``), as in the paper; SAM's score is that output's score and the
entropies are the plain ``h_*`` columns. For task supervision the base is SAM's own pick
(``argmax(sam_scores)``), so SAM's score is the highest score and the entropies are the ``h_*_sam_pick``
columns (``h_task`` has no such variant: it describes all three outputs). The heads always read the IoU token
and the mask token of the best output (token k + 1 with the ``"true"`` pairing, k with ``"as-released"``),
built by the trainer's own feature function, so that they see exactly the inputs they were trained on.

Measures: per scenario the matching head (``model_gap``, ``prompt_gap``, ``task_gap``; for segmentation
uncertainty the IoU head of the size, e.g. ``iou_tiny``), SAM's score, the entropies ``h_std``, ``h_all``,
``h_theta``, ``h_task``, ``h_prompt``, ``h_augmentation``, random order (mean of ``seeds`` seeded orders) and the
oracle. Two more head-based measures where an IoU head predicts the same thing another way: the IoU head of the
base (model selection ``iou_tiny``, prompt refinement the size head, task supervision ``iou_unsupervised``; a
low predicted IoU is corrected first), and the difference of the two IoU heads that predict the base and the
corrected IoU (``iou_large - iou_tiny``, ``iou_dense_prompt - iou_<size>``, ``iou_<size> - iou_unsupervised``),
a second estimate of the gain. Gap heads and entropies rank the highest values first; SAM's score and IoU heads
the lowest. A measure whose column is null for every object is skipped (and the report says so); one that is
null for some objects is scored on the objects where it is defined, against no correction and oracle curves
of those objects, and its object count is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from usam.errors import InvalidInputError
from usam.extraction.targets import best_output
from usam.head_table import HEAD_NAMES, is_gap_head
from usam.heads import UncertaintyHeads, load_heads
from usam.metrics import (
    CORRECTION_SCENARIOS,
    DEFAULT_NUM_POINTS,
    CorrectionScenario,
    Curve,
    correction_curve,
    no_correction_curve,
    oracle_curve,
    pearson_matrix,
    random_curve,
    relative_auc,
)
from usam.models import SIZES, get_model_spec
from usam.training import (
    HyperParameters,
    TrainingData,
    fill_head_features,
    paper_hyper_parameters,
    target_column,
    train_heads,
)

if TYPE_CHECKING:
    import pyarrow.dataset as ds

__all__ = [
    "ABLATION_SEED",
    "ABLATION_TEST_FRACTION",
    "ABLATION_VARIANTS",
    "AUC_RANGES",
    "ENTROPY_MEASURES",
    "run_evaluation",
]

AUC_RANGES: dict[str, float] = {"r_0_1": 1.0, "r_0_0.5": 0.5}
"""Key of each relative-AUC column and the largest fraction corrected that it integrates over."""

ENTROPY_MEASURES: tuple[str, ...] = ("h_std", "h_all", "h_theta", "h_task", "h_prompt", "h_augmentation")
"""Entropy columns evaluated as measures, in the order of the report."""

ABLATION_VARIANTS: dict[str, tuple[str, ...]] = {
    "iou_token": ("iou_token",),
    "mask_token": ("mask_token",),
    "both": ("iou_token", "mask_token"),
}
"""The token ablation's variants and the tokens their heads read."""

ABLATION_TEST_FRACTION = 0.3
"""Fraction of the images held out to score the ablation's heads (the rest trains them)."""
ABLATION_SEED = 0
"""Seed of the ablation's train/test split of the images and of its training."""
ABLATION_VALIDATION_FRACTION = 0.1
"""Fraction of the ablation's training images the trainer holds out to pick each head's best epoch."""
_ABLATION_MIN_IMAGES = 4

_RANGE_LABELS = {"r_0_1": "r ∈ [0, 1]", "r_0_0.5": "r ∈ [0, 0.5]"}
_SCENARIO_TITLES = {
    "model_selection": "Model selection (tiny → large)",
    "prompt_refinement": "Prompt refinement (center click → dense prompt)",
    "task_supervision": "Task supervision (SAM's pick → best of three)",
    "segmentation_uncertainty": "Segmentation uncertainty (→ perfect mask)",
}
_PRIMARY_HEADS = {"model_selection": "model_gap", "prompt_refinement": "prompt_gap", "task_supervision": "task_gap"}
_ENTROPY_LABELS = {
    "h_std": "Entropy H_std",
    "h_all": "Entropy H_all",
    "h_theta": "Entropy H_θ (model)",
    "h_task": "Entropy H_task",
    "h_prompt": "Entropy H_prompt",
    "h_augmentation": "Entropy H_aug",
}
_KEY_COLUMNS = ("dataset", "image_key", "object_id", "model")
_IOU_COLUMNS = ("iou", "unsupervised_iou", "iou_dense_prompt")
_GAP_COLUMNS = ("model_gap", "prompt_gap", "task_gap")
# Rows are read in batches of this many (a float32 batch of mask tokens is 4 KiB a row, so ~64 MB).
_READ_BATCH_ROWS = 16384
# Heads run on this many rows at a time, which bounds their activations to some tens of MB.
_HEAD_CHUNK_ROWS = 2048
# A correlation column null for more than this fraction of the rows is left out rather than thinning the rows.
_MAX_NULL_FRACTION_IN_CORRELATION = 0.5

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
_PLOT_STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PLOT_DPI = 200


@dataclasses.dataclass(frozen=True)
class _Measure:
    """One way of ranking objects.

    Attributes:
        key: Identifier in ``results.json``, the same in every scenario (e.g. ``"h_std"``, ``"model_gap"``).
        label: Name in the report and the plots.
        kind: ``"usam_head"``, ``"usam_head_difference"``, ``"sam_score"``, ``"entropy"``, ``"random"`` or
            ``"oracle"``.
        higher_is_uncertain: Whether the highest values are corrected first.
        source: The column or head(s) the values come from, as written in the report.
        colour_role: Key of :data:`_COLOURS`.
    """

    key: str
    label: str
    kind: str
    higher_is_uncertain: bool
    source: str
    colour_role: str


@dataclasses.dataclass
class _Rows:
    """Rows of a store with what the evaluation needs, sorted by dataset, image, object and model.

    Attributes:
        dataset, image_key, object_id, model: ``(N,)`` string arrays.
        values: Per IoU, gap and entropy column, ``(N,)`` float64 with NaN for null.
        sam_scores: ``(N, 3)`` SAM's scores of the three multimask outputs.
        mask_ious: ``(N, 3)`` IoU of the three outputs with the truth.
        head_values: Per loaded head, ``(N,)`` float64 outputs; NaN on rows whose tokens were not read.
        token_rows: ``(N,)`` index of a row's features in :attr:`features`, -1 if its tokens were not read.
        features: ``(T, 2 * token_dim)`` IoU token and best mask token of the rows with tokens, or None.
    """

    dataset: np.ndarray
    image_key: np.ndarray
    object_id: np.ndarray
    model: np.ndarray
    values: dict[str, np.ndarray]
    sam_scores: np.ndarray
    mask_ious: np.ndarray
    head_values: dict[str, np.ndarray]
    token_rows: np.ndarray
    features: np.ndarray | None

    def indices_of(self, model: str) -> np.ndarray:
        """Indices of the rows of one model, in sorted order."""
        return np.flatnonzero(self.model == model)

    def object_keys(self, indices: np.ndarray) -> list[tuple[str, str, str]]:
        """The ``(dataset, image_key, object_id)`` of some rows."""
        return list(
            zip(
                self.dataset[indices].tolist(),
                self.image_key[indices].tolist(),
                self.object_id[indices].tolist(),
                strict=True,
            )
        )

    def image_names(self, indices: np.ndarray) -> np.ndarray:
        """``"<dataset>/<image_key>"`` of some rows, as the trainer names images."""
        return np.char.add(np.char.add(self.dataset[indices].astype(str), "/"), self.image_key[indices].astype(str))


@dataclasses.dataclass
class _ScenarioObjects:
    """The objects of one scenario: their base row, base and corrected IoU, and what was dropped."""

    base_rows: np.ndarray
    base_iou: np.ndarray
    corrected_iou: np.ndarray
    counts: dict[str, int]


def run_evaluation(
    store: str | os.PathLike[str],
    heads_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str = "tiny",
    seeds: int = 10,
    ablation: bool = True,
    ablation_hyper_parameters: HyperParameters | Mapping[str, HyperParameters] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate heads and baseline measures on a token store and write a report with plots.

    See the module documentation for which rows, masks and measures each scenario uses.

    Args:
        store: Token store directory (:mod:`usam.store`).
        heads_path: Heads file or the authors' heads folder (:func:`usam.load_heads`).
        out_dir: Folder for ``report.md``, ``results.json`` and the PNGs; created if missing, files in it
            overwritten.
        model: SAM2 size to evaluate (``tiny``, ``small``, ``base-plus``, ``large``), or a full model name such as
            ``sam2.1-tiny`` when the store holds several SAM2 versions of that size.
        seeds: Number of seeded random orders averaged for the random baseline.
        ablation: Train heads on the IoU token only, the mask token only and both, and score them.
        ablation_hyper_parameters: Training of the ablation's heads: one set for all heads, one per head, or
            None for the paper's hyper-parameters of the store's dataset (COCO's if it is not one of the paper's).
        progress: Show progress bars.

    Returns:
        The content of ``results.json`` (with NaN where JSON has null).

    Raises:
        InvalidInputError: If an argument is invalid, the store has no rows of the requested model, or the
            heads do not fit the store's tokens.
        StoreError: If the store cannot be read.
        HeadsFileError: If the heads file cannot be read.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise InvalidInputError(f"seeds must be a whole number >= 1 (random orders to average), got {seeds!r}")
    _check_hyper_parameters_type(ablation_hyper_parameters)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"the output {out_dir} is a file; give a folder for the report and plots")
    store = Path(store).expanduser()
    heads = load_heads(heads_path)

    from usam.store import open_store, reading_errors

    dataset = open_store(store)
    token_dim = _store_token_dim(dataset)
    if heads.metadata.token_dim != token_dim:
        raise InvalidInputError(
            f"the heads read tokens of {heads.metadata.token_dim} values, the store holds tokens of {token_dim}; "
            "use heads trained on this kind of store"
        )
    with reading_errors(f"the store {store}"):
        import pyarrow.compute as pc

        store_models = sorted(pc.unique(dataset.to_table(columns=["model"]).column("model")).to_pylist())
    if not store_models:
        raise InvalidInputError(f"the store {store} has no rows; extract tokens into it first")
    evaluated_model, tiny_model, large_model = _resolve_models(model, store_models, store)
    token_models = sorted({evaluated_model} | ({tiny_model} if tiny_model else set()))
    read_models = sorted(set(token_models) | ({large_model} if large_model else set()))
    rows = _read_rows(store, dataset, read_models, token_models, heads, keep_features=ablation, progress=progress)

    size = _size_and_version(evaluated_model)[0]
    size_head = "iou_" + size.replace("-", "_") if size else None
    scenario_models = {
        "model_selection": (tiny_model, large_model),
        "prompt_refinement": (evaluated_model, None),
        "task_supervision": (evaluated_model, None),
        "segmentation_uncertainty": (evaluated_model, None),
    }
    fractions = np.linspace(0.0, 1.0, DEFAULT_NUM_POINTS)
    warnings_list = _warnings(heads, heads_path, store, evaluated_model)

    scenario_results: dict[str, dict[str, Any]] = {}
    scenario_objects: dict[str, _ScenarioObjects] = {}
    scenario_measures: dict[str, list[_Measure]] = {}
    for scenario in CORRECTION_SCENARIOS:
        base_model, corrected_model = scenario_models[scenario.name]
        if base_model is None or (scenario.corrected_model is not None and corrected_model is None):
            needed = f"{scenario.base_model} and {scenario.corrected_model}"
            scenario_results[scenario.name] = _skipped_scenario(
                scenario, f"the store has no rows of the {needed} models of {evaluated_model}'s SAM2 version"
            )
            continue
        objects = _scenario_objects(rows, scenario, base_model, corrected_model)
        if objects.base_rows.size == 0:
            scenario_results[scenario.name] = _skipped_scenario(scenario, "no object has all the rows it needs")
            continue
        measures = _scenario_measures(scenario.name, _size_head_of(base_model) or size_head)
        scenario_objects[scenario.name] = objects
        scenario_measures[scenario.name] = measures
        scenario_results[scenario.name] = _evaluate_scenario(
            scenario, objects, measures, rows, base_model, corrected_model, fractions, seeds
        )

    correlation = _correlation(rows, rows.indices_of(evaluated_model), heads.names)
    ablation_result: dict[str, Any] | None = None
    if ablation:
        ablation_result = _run_ablation(
            rows,
            scenario_objects,
            scenario_measures,
            evaluated_model,
            tiny_model,
            size_head,
            heads,
            ablation_hyper_parameters,
            fractions,
            seeds,
            progress,
        )

    from usam import __version__

    results: dict[str, Any] = {
        "usam_version": __version__,
        "store": str(store),
        "heads": str(Path(heads_path).expanduser()),
        "heads_metadata": {
            "names": heads.names,
            "pairing": heads.metadata.pairing,
            "inputs": list(heads.metadata.inputs),
            "sam2_version": heads.metadata.sam2_version,
        },
        "model": evaluated_model,
        "models_used": {"evaluated": evaluated_model, "tiny": tiny_model, "large": large_model},
        "num_rows": {name: int(np.count_nonzero(rows.model == name)) for name in read_models},
        "seeds": int(seeds),
        "auc_ranges": {key: [0.0, value] for key, value in AUC_RANGES.items()},
        "relative_auc_definition": (
            "100 * (AUC - AUC_no_correction) / (AUC_oracle - AUC_no_correction), in percent, "
            "trapezoidal AUC of the mean IoU over the fraction r of objects corrected"
        ),
        "fractions": fractions.tolist(),
        "evaluated_mask": (
            "best of the three multimask outputs (argmax mask_ious); SAM's pick (argmax sam_scores) for the "
            "SAM score and entropies of task supervision; heads read the best output's mask token"
        ),
        "warnings": warnings_list,
        "scenarios": scenario_results,
        "correlation": correlation,
        "ablation": ablation_result,
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for scenario in CORRECTION_SCENARIOS:
        entry = scenario_results[scenario.name]
        if entry["status"] == "done":
            path = out_dir / f"curves_{scenario.name}.png"
            _plot_scenario(path, scenario, entry, scenario_measures[scenario.name], evaluated_model)
            entry["plot"] = path.name
            files.append(path.name)
    if correlation["names"]:
        path = out_dir / "correlation.png"
        _plot_correlation(path, correlation, evaluated_model)
        correlation["plot"] = path.name
        files.append(path.name)
    if ablation_result is not None and ablation_result["status"] == "done":
        path = out_dir / "ablation.png"
        _plot_ablation(path, ablation_result, evaluated_model)
        ablation_result["plot"] = path.name
        files.append(path.name)
    results["files"] = ["report.md", "results.json", *files]
    (out_dir / "results.json").write_text(
        json.dumps(_json_ready(results), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(_report(results), encoding="utf-8")
    return results


# Models --------------------------------------------------------------------------------------------------------


def _size_and_version(model: str) -> tuple[str | None, str | None]:
    """SAM2 size and version of a model name; for an unknown name, a size suffix and the rest as version."""
    try:
        spec = get_model_spec(model)
    except InvalidInputError:
        # Sizes are tested longest first, so that "...-base-plus" is not mistaken for something shorter.
        for size in sorted(SIZES, key=len, reverse=True):
            if model.endswith("-" + size):
                return size, model[: -len(size) - 1]
        return None, None
    return spec.size, spec.version


def _size_head_of(model: str | None) -> str | None:
    size = _size_and_version(model)[0] if model else None
    return "iou_" + size.replace("-", "_") if size else None


def _resolve_models(model: str, store_models: list[str], store: Path) -> tuple[str, str | None, str | None]:
    """The store's model to evaluate and the tiny and large models of its version (None if absent)."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(f"model must be a SAM2 size ({', '.join(SIZES)}) or model name, got {model!r}")
    wanted = model.strip().lower()
    size_aliases = {size: size for size in SIZES} | {"base_plus": "base-plus", "base+": "base-plus", "b+": "base-plus"}
    if wanted in size_aliases:
        size = size_aliases[wanted]
        candidates = [name for name in store_models if _size_and_version(name)[0] == size]
    else:
        try:
            spec_name = get_model_spec(wanted).name
        except InvalidInputError:
            spec_name = wanted
        candidates = [name for name in store_models if name.lower() == wanted or _safe_spec_name(name) == spec_name]
        if not candidates and _size_and_version(wanted)[0] is None:
            raise InvalidInputError(
                f"unknown model {model!r}; give a SAM2 size ({', '.join(SIZES)}) or a model name from the store "
                f"({', '.join(store_models)})"
            )
    if not candidates:
        raise InvalidInputError(
            f"the store {store} has no rows of a {model!r} model; it has rows of {', '.join(store_models)}"
        )
    if len(candidates) > 1:
        raise InvalidInputError(
            f"the store {store} has several {model!r} models ({', '.join(candidates)}); pass the full model name"
        )
    evaluated = candidates[0]
    version = _size_and_version(evaluated)[1]

    def same_version(size: str) -> str | None:
        matches = [name for name in store_models if _size_and_version(name) == (size, version)]
        return matches[0] if len(matches) == 1 else None

    return evaluated, same_version("tiny"), same_version("large")


def _safe_spec_name(name: str) -> str | None:
    try:
        return get_model_spec(name).name
    except InvalidInputError:
        return None


# Reading ---------------------------------------------------------------------------------------------------------


def _store_token_dim(dataset: ds.Dataset) -> int:
    return dataset.schema.field("iou_token").type.list_size


def _entropy_columns(dataset: ds.Dataset) -> list[str]:
    return [name for name in dataset.schema.names if name.startswith("h_")]


def _read_rows(
    store: Path,
    dataset: ds.Dataset,
    models: Sequence[str],
    token_models: Sequence[str],
    heads: UncertaintyHeads,
    *,
    keep_features: bool,
    progress: bool,
) -> _Rows:
    """Read the rows of ``models``; run the heads (and keep both-token features) on those of ``token_models``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm.auto import tqdm

    from usam.store import reading_errors, token_arrays

    value_columns = [*_IOU_COLUMNS, *_GAP_COLUMNS, *_entropy_columns(dataset)]
    columns = [*_KEY_COLUMNS, *value_columns, "sam_scores", "mask_ious", "iou_token", "mask_tokens"]
    heads_inputs = tuple(heads.metadata.inputs)
    both_inputs = ABLATION_VARIANTS["both"]
    pairing = heads.metadata.pairing
    row_filter = pc.field("model").isin(list(models))

    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*_KEY_COLUMNS, *value_columns]}
    sam_scores, mask_ious, has_tokens, head_outputs, features = [], [], [], [], []
    with reading_errors(f"the store {store}"):
        total = dataset.count_rows(filter=row_filter)
        batches = dataset.to_batches(columns=columns, filter=row_filter, batch_size=_READ_BATCH_ROWS)
        with tqdm(total=total, desc="reading store", unit="row", disable=not progress) as bar:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                table = pa.Table.from_batches([batch])
                for name in parts:
                    parts[name].append(table.column(name).to_numpy(zero_copy_only=False))
                sam_scores.append(token_arrays(table, "sam_scores", np.float64))
                mask_ious.append(token_arrays(table, "mask_ious", np.float64))
                with_tokens = np.isin(table.column("model").to_numpy(zero_copy_only=False), token_models)
                has_tokens.append(with_tokens)
                token_table = table.filter(pa.array(with_tokens))
                inputs = np.empty((token_table.num_rows, heads.metadata.input_dim), dtype=np.float32)
                fill_head_features(token_table, inputs, heads_inputs, pairing)
                head_outputs.append(_run_heads(heads, inputs).T)
                if keep_features:
                    if heads_inputs == both_inputs:
                        features.append(inputs)
                    else:
                        both = np.empty((token_table.num_rows, 2 * heads.metadata.token_dim), dtype=np.float32)
                        fill_head_features(token_table, both, both_inputs, pairing)
                        features.append(both)
                bar.update(batch.num_rows)

    def joined(chunks: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.empty(shape, dtype=dtype)

    has_tokens_all = joined(has_tokens, (0,), bool)
    num_rows = has_tokens_all.size
    keys = {name: joined(parts[name], (0,), object).astype(str) for name in _KEY_COLUMNS}
    values = {name: joined(parts[name], (0,), np.float64).astype(np.float64) for name in value_columns}
    outputs = joined(head_outputs, (0, len(heads.names)), np.float64)
    token_rows = np.full(num_rows, -1, dtype=np.int64)
    token_rows[has_tokens_all] = np.arange(int(has_tokens_all.sum()))
    head_values = {}
    for index, name in enumerate(heads.names):
        column = np.full(num_rows, np.nan)
        column[has_tokens_all] = outputs[:, index]
        head_values[name] = column

    # The store returns rows in no guaranteed order; random baselines depend on the order of the objects.
    order = np.lexsort([keys[name] for name in reversed(_KEY_COLUMNS)])
    return _Rows(
        dataset=keys["dataset"][order],
        image_key=keys["image_key"][order],
        object_id=keys["object_id"][order],
        model=keys["model"][order],
        values={name: column[order] for name, column in values.items()},
        sam_scores=joined(sam_scores, (0, 3), np.float64)[order],
        mask_ious=joined(mask_ious, (0, 3), np.float64)[order],
        head_values={name: column[order] for name, column in head_values.items()},
        token_rows=token_rows[order],
        features=joined(features, (0, 2 * heads.metadata.token_dim), np.float32) if keep_features else None,
    )


def _run_heads(heads: UncertaintyHeads, features: np.ndarray) -> np.ndarray:
    """Reported values of every head, ``(H, N)`` float64, computed in chunks of rows."""
    outputs = np.empty((len(heads.names), features.shape[0]), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, features.shape[0], _HEAD_CHUNK_ROWS):
            chunk = torch.from_numpy(np.ascontiguousarray(features[start : start + _HEAD_CHUNK_ROWS]))
            outputs[:, start : start + chunk.shape[0]] = heads(chunk).double().numpy()
    return outputs


# Scenarios --------------------------------------------------------------------------------------------------------


def _scenario_objects(
    rows: _Rows, scenario: CorrectionScenario, base_model: str, corrected_model: str | None
) -> _ScenarioObjects:
    """The objects of a scenario: base rows of ``base_model``, corrected values from the same or a joined row."""
    base_rows = rows.indices_of(base_model)
    counts = {"base_rows": int(base_rows.size)}
    base_iou = rows.values[scenario.base_column][base_rows]
    if isinstance(scenario.corrected, str):
        if corrected_model is None:
            corrected_iou = rows.values[scenario.corrected][base_rows]
        else:
            corrected_rows = rows.indices_of(corrected_model)
            position = {key: index for index, key in zip(corrected_rows, rows.object_keys(corrected_rows), strict=True)}
            base_keys = rows.object_keys(base_rows)
            partner = np.array([position.get(key, -1) for key in base_keys], dtype=np.int64)
            counts["corrected_rows"] = int(corrected_rows.size)
            counts["objects_without_corrected_row"] = int(np.count_nonzero(partner < 0))
            counts["objects_without_base_row"] = len(set(position) - set(base_keys))
            joined = partner >= 0
            base_rows, base_iou, partner = base_rows[joined], base_iou[joined], partner[joined]
            corrected_iou = rows.values[scenario.corrected][partner]
    else:
        corrected_iou = np.full(base_rows.size, float(scenario.corrected))
    usable = np.isfinite(base_iou) & np.isfinite(corrected_iou)
    counts["objects_with_missing_iou"] = int(np.count_nonzero(~usable))
    counts["objects"] = int(np.count_nonzero(usable))
    return _ScenarioObjects(base_rows[usable], base_iou[usable], corrected_iou[usable], counts)


def _scenario_measures(scenario: str, size_head: str | None) -> list[_Measure]:
    """The measures of a scenario, in the order of the report; ``size_head`` is the base model's IoU head."""
    measures: list[_Measure] = []
    head_words = "USAM"
    if scenario in _PRIMARY_HEADS:
        head = _PRIMARY_HEADS[scenario]
        measures.append(_Measure(head, f"{head_words} {head}", "usam_head", True, f"head {head}", "primary_head"))
    elif size_head:
        measures.append(
            _Measure(size_head, f"{head_words} {size_head}", "usam_head", False, f"head {size_head}", "primary_head")
        )
    base_head, difference = {
        "model_selection": ("iou_tiny", ("iou_large", "iou_tiny")),
        "prompt_refinement": (size_head, ("iou_dense_prompt", size_head)),
        "task_supervision": ("iou_unsupervised", (size_head, "iou_unsupervised")),
    }.get(scenario, (None, None))
    if base_head:
        measures.append(
            _Measure(base_head, f"{head_words} {base_head}", "usam_head", False, f"head {base_head}", "iou_head")
        )
    if difference and all(difference):
        key = f"{difference[0]}-{difference[1]}"
        measures.append(
            _Measure(key, f"{head_words} {difference[0]} − {difference[1]}", "usam_head_difference", True,
                     f"head {difference[0]} minus head {difference[1]}", "head_difference")
        )  # fmt: skip
    sam_pick = scenario == "task_supervision"
    score_source = "highest of sam_scores (SAM's pick)" if sam_pick else "sam_scores of the best output"
    measures.append(_Measure("sam_score", "SAM score", "sam_score", False, score_source, "sam_score"))
    for name in ENTROPY_MEASURES:
        column = f"{name}_sam_pick" if sam_pick and name != "h_task" else name
        measures.append(_Measure(name, _ENTROPY_LABELS[name], "entropy", True, f"column {column}", name))
    return measures


def _measure_values(
    measure: _Measure, rows: _Rows, indices: np.ndarray, head_values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """A measure's values on some rows (NaN where undefined), or None if its heads or column are missing."""
    if measure.kind == "usam_head":
        return head_values[measure.key][indices] if measure.key in head_values else None
    if measure.kind == "usam_head_difference":
        minuend, subtrahend = measure.key.split("-")
        if minuend not in head_values or subtrahend not in head_values:
            return None
        return head_values[minuend][indices] - head_values[subtrahend][indices]
    if measure.kind == "sam_score":
        scores = rows.sam_scores[indices]
        if measure.source.startswith("highest"):
            return np.max(np.where(np.isnan(scores), -np.inf, scores), axis=1)
        return scores[np.arange(indices.size), best_output(rows.mask_ious[indices])]
    column = measure.source.removeprefix("column ")
    return rows.values[column][indices] if column in rows.values else None


def _ranking_result(
    base: np.ndarray, corrected: np.ndarray, values: np.ndarray, higher: bool, fractions: np.ndarray
) -> dict[str, Any]:
    """Curve and relative AUCs of ranking by ``values``; objects where they are NaN are left out of everything."""
    defined = ~np.isnan(values)
    base, corrected, values = base[defined], corrected[defined], values[defined]
    curve = correction_curve(base, corrected, values, fractions=fractions, higher_is_uncertain=higher)
    none = no_correction_curve(base, fractions=fractions)
    oracle = oracle_curve(base, corrected, fractions=fractions)
    return {
        "num_objects": int(defined.sum()),
        "relative_auc_percent": _relative_aucs(curve, none, oracle),
        "mean_iou": curve.mean_iou.tolist(),
    }


def _relative_aucs(curve: Curve, none: Curve, oracle: Curve) -> dict[str, float]:
    return {key: relative_auc(curve, none, oracle, max_fraction=limit) for key, limit in AUC_RANGES.items()}


def _evaluate_scenario(
    scenario: CorrectionScenario,
    objects: _ScenarioObjects,
    measures: list[_Measure],
    rows: _Rows,
    base_model: str,
    corrected_model: str | None,
    fractions: np.ndarray,
    seeds: int,
) -> dict[str, Any]:
    base, corrected = objects.base_iou, objects.corrected_iou
    none = no_correction_curve(base, fractions=fractions)
    oracle = oracle_curve(base, corrected, fractions=fractions)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for measure in measures:
        values = _measure_values(measure, rows, objects.base_rows, rows.head_values)
        if values is None:
            missing = measure.source.removeprefix("head ").replace(" minus head ", " or ")
            skipped[measure.key] = f"{missing} is not in the heads file" if "head" in measure.kind else "no column"
            continue
        if np.all(np.isnan(values)):
            where = measure.source.removeprefix("column ")
            skipped[measure.key] = f"{where} is null for every object (Monte Carlo skipped at extraction?)"
            continue
        results[measure.key] = {
            **_measure_description(measure),
            **_ranking_result(base, corrected, values, measure.higher_is_uncertain, fractions),
        }
    random = random_curve(base, corrected, num_seeds=seeds, fractions=fractions)
    results["random"] = {
        "label": f"Random ({seeds} seeds)",
        "kind": "random",
        "ranks_first": "random",
        "source": f"mean of {seeds} seeded random orders",
        "num_objects": int(base.size),
        "relative_auc_percent": _relative_aucs(random, none, oracle),
        "mean_iou": random.mean_iou.tolist(),
    }
    results["oracle"] = {
        "label": "Oracle",
        "kind": "oracle",
        "ranks_first": "largest true gain",
        "source": "corrected IoU minus base IoU",
        "num_objects": int(base.size),
        "relative_auc_percent": _relative_aucs(oracle, none, oracle),
        "mean_iou": oracle.mean_iou.tolist(),
    }
    return {
        "status": "done",
        "title": _SCENARIO_TITLES[scenario.name],
        "description": scenario.description,
        "base": {"model": base_model, "column": scenario.base_column},
        "corrected": {"model": corrected_model or base_model, "value": scenario.corrected},
        "counts": objects.counts,
        "num_objects": int(base.size),
        "mean_base_iou": float(base.mean()),
        "mean_corrected_iou": float(corrected.mean()),
        "no_correction": {"mean_iou": none.mean_iou.tolist()},
        "measures": results,
        "skipped_measures": skipped,
    }


def _measure_description(measure: _Measure) -> dict[str, Any]:
    return {
        "label": measure.label,
        "kind": measure.kind,
        "ranks_first": "highest values" if measure.higher_is_uncertain else "lowest values",
        "source": measure.source,
    }


def _skipped_scenario(scenario: CorrectionScenario, reason: str) -> dict[str, Any]:
    return {
        "status": "skipped",
        "reason": reason,
        "title": _SCENARIO_TITLES[scenario.name],
        "description": scenario.description,
    }


# Correlation -------------------------------------------------------------------------------------------------------


def _correlation(rows: _Rows, indices: np.ndarray, head_names: Sequence[str]) -> dict[str, Any]:
    """Pearson matrix of true IoU and gaps, SAM's score, entropies and heads on some rows (Table 5)."""
    candidates: dict[str, tuple[str, np.ndarray]] = {
        "true_iou": ("True IoU", rows.values["iou"][indices]),
        "sam_score": ("SAM score", rows.sam_scores[indices, best_output(rows.mask_ious[indices])]),
    }
    for name in ENTROPY_MEASURES:
        if name in rows.values:
            candidates[name] = (_ENTROPY_LABELS[name].removeprefix("Entropy "), rows.values[name][indices])
    for name in _GAP_COLUMNS:
        candidates[f"true_{name}"] = (f"True {name}", rows.values[name][indices])
    for name in head_names:
        candidates[f"head_{name}"] = (f"USAM {name}", rows.head_values[name][indices])

    left_out: dict[str, str] = {}
    kept = {}
    for key, (label, values) in candidates.items():
        null_fraction = float(np.mean(np.isnan(values))) if values.size else 1.0
        if null_fraction == 1.0:
            left_out[key] = "null for every row"
        elif null_fraction > _MAX_NULL_FRACTION_IN_CORRELATION:
            left_out[key] = f"null for {null_fraction:.0%} of the rows"
        else:
            kept[key] = (label, values)
    complete = np.ones(indices.size, dtype=bool)
    for _, values in kept.values():
        complete &= np.isfinite(values)
    names, matrix = pearson_matrix({key: values[complete] for key, (_, values) in kept.items()})
    return {
        "names": names,
        "labels": [kept[key][0] for key in names],
        "matrix": matrix.tolist(),
        "num_rows": int(complete.sum()),
        "rows_with_nulls_dropped": int((~complete).sum()),
        "left_out": left_out,
    }


# Ablation ----------------------------------------------------------------------------------------------------------


def _check_hyper_parameters_type(hyper_parameters: object) -> None:
    if hyper_parameters is None or isinstance(hyper_parameters, HyperParameters):
        return
    if not isinstance(hyper_parameters, Mapping) or not all(
        isinstance(value, HyperParameters) for value in hyper_parameters.values()
    ):
        raise InvalidInputError(
            "ablation_hyper_parameters must be a usam.training.HyperParameters, a mapping from head name to "
            "HyperParameters, or None for the paper's"
        )


def _ablation_hyper_parameters(
    given: HyperParameters | Mapping[str, HyperParameters] | None, heads: list[str], rows: _Rows
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


def _run_ablation(
    rows: _Rows,
    scenario_objects: Mapping[str, _ScenarioObjects],
    scenario_measures: Mapping[str, list[_Measure]],
    evaluated_model: str,
    tiny_model: str | None,
    size_head: str | None,
    heads: UncertaintyHeads,
    hyper_parameters: HyperParameters | Mapping[str, HyperParameters] | None,
    fractions: np.ndarray,
    seeds: int,
    progress: bool,
) -> dict[str, Any]:
    """Train the scenarios' heads on each token variant on training images; score them on test images."""
    protocol = {
        "split": "by image, seeded",
        "test_fraction": ABLATION_TEST_FRACTION,
        "seed": ABLATION_SEED,
        "validation_fraction_of_training_images": ABLATION_VALIDATION_FRACTION,
        "pairing": heads.metadata.pairing,
        "rows": f"each head learns from the training images' rows of the model whose rows it ranks: {evaluated_model}"
        + (
            f", and {tiny_model} for model_gap (the base of model selection)"
            if tiny_model not in (None, evaluated_model)
            else ""
        ),
    }
    token_row_indices = np.flatnonzero(rows.token_rows >= 0)
    is_test_row = np.zeros(rows.model.size, dtype=bool)
    is_test_token_row, num_images = _split_images(rows.image_names(token_row_indices))
    is_test_row[token_row_indices] = is_test_token_row
    protocol["images"] = num_images
    if num_images < _ABLATION_MIN_IMAGES:
        return {
            "status": "skipped",
            "reason": f"the store has {num_images} image(s); the ablation's split needs {_ABLATION_MIN_IMAGES}",
            "protocol": protocol,
        }
    protocol["test_images"] = len(set(rows.image_names(token_row_indices[is_test_token_row]).tolist()))
    protocol["train_images"] = num_images - protocol["test_images"]

    # Which head each scenario's ablation trains, and on the training rows of which model.
    scenario_heads = {
        name: (_PRIMARY_HEADS.get(name, size_head), tiny_model if name == "model_selection" else evaluated_model)
        for name in scenario_objects
    }
    training_rows = np.flatnonzero(~is_test_row & (rows.token_rows >= 0))
    targets: dict[str, np.ndarray] = {}
    for head, model in {head: model for head, model in scenario_heads.values() if head}.items():
        values = np.full(training_rows.size, np.nan)
        own = rows.model[training_rows] == model
        column = rows.values[target_column(head)][training_rows]
        values[own] = column[own] + (0.5 if is_gap_head(head) else 0.0)
        if np.isfinite(values).any():
            targets[head] = np.clip(values, 0.0, 1.0)
    trained_heads = [name for name in HEAD_NAMES if name in targets]
    if not trained_heads:
        return {"status": "skipped", "reason": "no head has training targets", "protocol": protocol}
    hyper, hyper_source = _ablation_hyper_parameters(hyper_parameters, trained_heads, rows)
    protocol["hyper_parameters"] = {name: hyper[name].to_dict() for name in trained_heads}
    protocol["hyper_parameter_source"] = hyper_source

    assert rows.features is not None  # read with keep_features whenever the ablation runs
    token_dim = heads.metadata.token_dim
    variant_slices = {"iou_token": slice(0, token_dim), "mask_token": slice(token_dim, None), "both": slice(None)}
    variant_heads: dict[str, dict[str, np.ndarray]] = {}
    variants: dict[str, Any] = {}
    for variant, inputs in ABLATION_VARIANTS.items():
        features = rows.features[:, variant_slices[variant]]
        data = TrainingData.from_arrays(
            features[rows.token_rows[training_rows]],
            rows.image_names(training_rows),
            {name: targets[name] for name in trained_heads},
            inputs=inputs,
            pairing=heads.metadata.pairing,
            source={"source": "usam.evaluation token ablation", "variant": variant},
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
            return {"status": "failed", "reason": f"training the {variant} heads failed: {error}", "protocol": protocol}
        outputs = _run_heads(module, np.ascontiguousarray(features))
        values_per_head = {}
        for index, name in enumerate(module.names):
            column = np.full(rows.model.size, np.nan)
            column[token_row_indices] = outputs[index][rows.token_rows[token_row_indices]]
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

    scenarios: dict[str, Any] = {}
    for name, objects in scenario_objects.items():
        head = scenario_heads[name][0]
        if head not in targets:
            scenarios[name] = {"status": "skipped", "reason": f"no training targets for {head}"}
            continue
        on_test = is_test_row[objects.base_rows]
        if not on_test.any():
            scenarios[name] = {"status": "skipped", "reason": "no object of this scenario is on a test image"}
            continue
        test_rows = objects.base_rows[on_test]
        base, corrected = objects.base_iou[on_test], objects.corrected_iou[on_test]
        head_measure = next(measure for measure in scenario_measures[name] if measure.key == head)
        scores: dict[str, Any] = {}
        for variant in ABLATION_VARIANTS:
            values = variant_heads[variant][head][test_rows]
            scores[variant] = _ranking_result(base, corrected, values, head_measure.higher_is_uncertain, fractions)
        provided = _measure_values(head_measure, rows, test_rows, rows.head_values)
        if provided is not None and not np.all(np.isnan(provided)):
            scores["provided_heads"] = _ranking_result(
                base, corrected, provided, head_measure.higher_is_uncertain, fractions
            )
        sam_score = next(measure for measure in scenario_measures[name] if measure.key == "sam_score")
        scores["sam_score"] = _ranking_result(
            base, corrected, _measure_values(sam_score, rows, test_rows, rows.head_values), False, fractions
        )
        none = no_correction_curve(base, fractions=fractions)
        oracle = oracle_curve(base, corrected, fractions=fractions)
        random = random_curve(base, corrected, num_seeds=seeds, fractions=fractions)
        scores["random"] = {"num_objects": int(base.size), "relative_auc_percent": _relative_aucs(random, none, oracle)}
        for entry in scores.values():
            entry.pop("mean_iou", None)
        scenarios[name] = {"status": "done", "head": head, "num_test_objects": int(base.size), "scores": scores}
    return {"status": "done", "protocol": protocol, "variants": variants, "scenarios": scenarios}


# Warnings ------------------------------------------------------------------------------------------------------


def _warnings(heads: UncertaintyHeads, heads_path: str | os.PathLike[str], store: Path, model: str) -> list[str]:
    notes = []
    training = heads.metadata.training or {}
    trained_on = (training.get("data") or {}).get("store") if isinstance(training.get("data"), dict) else None
    if trained_on and Path(trained_on).expanduser().resolve() == store.resolve():
        notes.append(
            "The heads were trained on this store: the heads' numbers are measured on (at least partly) their "
            "own training data and overstate how well they generalise. Evaluate on a store of another split."
        )
    version = _size_and_version(model)[1]
    if heads.metadata.sam2_version and version and heads.metadata.sam2_version != version:
        notes.append(f"The heads were trained for {heads.metadata.sam2_version}, the evaluated rows come from {model}.")
    if "random initialisation" in str(training.get("source", "")):
        notes.append(f"The heads in {heads_path} have random weights: their numbers mean nothing.")
    return notes


# Plots -------------------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _format_percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}"


def _plot_scenario(
    path: Path, scenario: CorrectionScenario, entry: Mapping[str, Any], measures: list[_Measure], model: str
) -> None:
    plt = _pyplot()
    fractions = np.linspace(0.0, 1.0, DEFAULT_NUM_POINTS) * 100.0
    roles = {measure.key: measure.colour_role for measure in measures}
    results = entry["measures"]
    with plt.rc_context(_PLOT_STYLE):
        figure, axis = plt.subplots(figsize=(10.5, 5.8))
        axis.plot(fractions, entry["no_correction"]["mean_iou"], color=_COLOURS["no_correction"], lw=1.2,
                  label="No correction")  # fmt: skip
        for key, result in results.items():
            role = roles.get(key, key)
            aucs = result["relative_auc_percent"]
            label = f"{result['label']}: {_format_percent(aucs['r_0_1'])} | {_format_percent(aucs['r_0_0.5'])}"
            if result["num_objects"] != entry["num_objects"]:
                label += f"  (on {result['num_objects']} of {entry['num_objects']} objects)"
            style = {"color": _COLOURS[role], "lw": 1.6}
            if key == "oracle":
                style |= {"ls": "--", "lw": 2.0}
            elif key == "random":
                style |= {"ls": ":", "lw": 2.2}
            elif role == "primary_head":
                style |= {"lw": 2.6, "zorder": 5}
            elif role in ("iou_head", "head_difference"):
                style |= {"ls": "-."}
            axis.plot(fractions, result["mean_iou"], label=label, **style)
        # Marks where the second relative-AUC range, r in [0, 0.5], ends.
        axis.axvline(50.0, color="#c8c8c8", lw=1.0, ls=(0, (4, 3)), zorder=0)
        axis.text(50.8, 0.02, "r = 0.5", transform=axis.get_xaxis_transform(), color="#909090", fontsize=9)
        axis.set_xlim(0, 100)
        axis.set_xlabel("Objects corrected, most uncertain first (%)")
        axis.set_ylabel("Mean IoU over all objects")
        axis.set_title(f"{_SCENARIO_TITLES[scenario.name]} — {model}, {entry['num_objects']} objects")
        axis.grid(True, color="#ececec", lw=0.8)
        axis.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            title="Relative AUC (%): r ≤ 1 | r ≤ 0.5",
            title_fontsize=9.5,
        )
        figure.tight_layout()
        figure.savefig(path, dpi=_PLOT_DPI, bbox_inches="tight")
        plt.close(figure)


def _plot_correlation(path: Path, correlation: Mapping[str, Any], model: str) -> None:
    plt = _pyplot()
    matrix = np.array(correlation["matrix"], dtype=np.float64).reshape(len(correlation["names"]), -1)
    labels = correlation["labels"]
    count = len(labels)
    side = max(6.0, 0.55 * count + 2.5)
    with plt.rc_context(_PLOT_STYLE | {"axes.spines.top": True, "axes.spines.right": True}):
        figure, axis = plt.subplots(figsize=(side + 1.2, side))
        colour_map = plt.get_cmap("RdBu_r").with_extremes(bad="#e8e8e8")
        image = axis.imshow(np.ma.masked_invalid(matrix), cmap=colour_map, vmin=-1.0, vmax=1.0)
        font_size = 9 if count <= 12 else 7
        for row in range(count):
            for column in range(count):
                value = matrix[row, column]
                text = "–" if not math.isfinite(value) else f"{value:.2f}"
                colour = "white" if math.isfinite(value) and abs(value) > 0.6 else "black"
                axis.text(column, row, text, ha="center", va="center", fontsize=font_size, color=colour)
        axis.set_xticks(range(count), labels, rotation=45, ha="right")
        axis.set_yticks(range(count), labels)
        axis.set_title(f"Pearson correlation — {model}, {correlation['num_rows']} objects")
        bar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.03)
        bar.set_label("Pearson r")
        figure.tight_layout()
        figure.savefig(path, dpi=_PLOT_DPI, bbox_inches="tight")
        plt.close(figure)


def _plot_ablation(path: Path, ablation: Mapping[str, Any], model: str) -> None:
    plt = _pyplot()
    scenarios = [name for name, entry in ablation["scenarios"].items() if entry["status"] == "done"]
    bars = [
        ("iou_token", "IoU token only", "#9ecae1", None),
        ("mask_token", "Mask token only", "#4292c6", None),
        ("both", "Both tokens", "#08306b", None),
        ("provided_heads", "Provided heads", "#d62728", "//"),
        ("sam_score", "SAM score", "#fdae6b", None),
        ("random", "Random", "#bdbdbd", None),
    ]
    present = [bar for bar in bars if any(bar[0] in ablation["scenarios"][name]["scores"] for name in scenarios)]
    width = 0.8 / max(len(present), 1)
    with plt.rc_context(_PLOT_STYLE):
        figure, axes = plt.subplots(1, len(AUC_RANGES), figsize=(6.2 * len(AUC_RANGES), 5.0), sharey=True)
        for axis, range_key in zip(np.atleast_1d(axes), AUC_RANGES, strict=True):
            positions = np.arange(len(scenarios))
            for offset, (key, label, colour, hatch) in enumerate(present):
                heights = [
                    ablation["scenarios"][name]["scores"].get(key, {}).get("relative_auc_percent", {}).get(range_key)
                    for name in scenarios
                ]
                heights = [np.nan if value is None else value for value in heights]
                shift = (offset - (len(present) - 1) / 2) * width
                axis.bar(positions + shift, heights, width, label=label, color=colour, hatch=hatch,
                         edgecolor="white" if hatch is None else "#7f0000", linewidth=0.6)  # fmt: skip
            axis.axhline(0.0, color="#505050", lw=0.8)
            axis.axhline(100.0, color="#000000", lw=1.0, ls="--")
            # "Segmentation uncertainty" -> "Segmentation\nuncertainty": horizontal labels that fit under the bars.
            axis.set_xticks(positions, [_SCENARIO_TITLES[name].split(" (")[0].replace(" ", "\n") for name in scenarios])
            axis.set_title(f"Relative AUC, {_RANGE_LABELS[range_key]}")
            axis.grid(True, axis="y", color="#ececec", lw=0.8)
        np.atleast_1d(axes)[0].set_ylabel("Relative AUC (%)  (oracle = 100, dashed)")
        handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=len(present), frameon=False,
                      bbox_to_anchor=(0.5, -0.01))  # fmt: skip
        protocol = ablation["protocol"]
        figure.suptitle(
            f"Token ablation — {model}: heads trained on {protocol['train_images']} images, "
            f"scored on {protocol['test_images']} held-out images"
        )
        figure.tight_layout(rect=(0, 0.07, 1, 1))
        figure.savefig(path, dpi=_PLOT_DPI, bbox_inches="tight")
        plt.close(figure)


# Report ----------------------------------------------------------------------------------------------------------


def _report(results: Mapping[str, Any]) -> str:
    heads = results["heads_metadata"]
    lines = [
        f"# UncertainSAM evaluation: {results['model']}",
        "",
        f"- Store: `{results['store']}` ("
        + ", ".join(f"{count} rows of {name}" for name, count in results["num_rows"].items())
        + ")",
        f"- Heads: `{results['heads']}`: {', '.join(heads['names'])}; pairing `{heads['pairing']}`, "
        f"inputs {' + '.join(heads['inputs'])}, trained for {heads['sam2_version'] or 'an unknown SAM2 version'}",
        f"- usam {results['usam_version']}; random baseline averaged over {results['seeds']} seeds",
        "",
    ]
    if results["warnings"]:
        lines += ["## Warnings", ""] + [f"- **{note}**" for note in results["warnings"]] + [""]
    lines += [
        "## How to read this",
        "",
        "Objects are ranked from most to least uncertain by a measure; the first fraction *r* of them is "
        "corrected, and the curves show the mean IoU over all objects against *r*. **Relative AUC** = "
        "100 · (AUC − AUC_none) / (AUC_oracle − AUC_none), in percent: 0 is no correction, 100 the oracle "
        "(which corrects in order of the true gain). Column **r ∈ [0, 1]** integrates over every fraction "
        "corrected; column **r ∈ [0, 0.5]** only up to half of the objects, the regime where a ranking is "
        "useful in practice. Random ranking is listed for reference; it does not score 0.",
        "",
        "The evaluated mask is the best of SAM2's three outputs (its IoU is column `iou`); SAM's score and the "
        "entropies are those of that mask, except in task supervision, whose base is SAM's own pick (highest "
        "score) and whose entropies are the `*_sam_pick` columns. The heads read the best output's mask token "
        f"(pairing `{heads['pairing']}`), as in training. *Ranks first*: highest or lowest values corrected first.",
        "",
        "## Correction scenarios",
        "",
    ]
    for entry in results["scenarios"].values():
        lines += [f"### {entry['title']}", "", entry["description"], ""]
        if entry["status"] != "done":
            lines += [f"Skipped: {entry['reason']}.", ""]
            continue
        counts = entry["counts"]
        count_text = f"{entry['num_objects']} objects of {entry['base']['model']}"
        if "objects_without_corrected_row" in counts:
            count_text += (
                f"; dropped: {counts['objects_without_corrected_row']} without a {entry['corrected']['model']} row, "
                f"{counts['objects_without_base_row']} without a {entry['base']['model']} row"
            )
        if counts["objects_with_missing_iou"]:
            count_text += f"; {counts['objects_with_missing_iou']} dropped for a missing IoU"
        corrected = entry["corrected"]["value"]
        corrected_text = f"`{corrected}`" if isinstance(corrected, str) else f"{corrected:g}"
        lines += [
            f"{count_text}. Base `{entry['base']['column']}` → corrected {corrected_text}: mean IoU "
            f"{entry['mean_base_iou']:.4f} → {entry['mean_corrected_iou']:.4f}.",
            "",
            "| Measure | Ranks first | Source | Rel. AUC r ∈ [0, 1] (%) | Rel. AUC r ∈ [0, 0.5] (%) | Objects |",
            "|---|---|---|---:|---:|---:|",
        ]
        for result in entry["measures"].values():
            aucs = result["relative_auc_percent"]
            lines.append(
                f"| {result['label']} | {result['ranks_first']} | {result['source']} | "
                f"{_format_percent(aucs['r_0_1'])} | {_format_percent(aucs['r_0_0.5'])} | {result['num_objects']} |"
            )
        lines.append("")
        if entry["skipped_measures"]:
            lines += [
                "Skipped measures: "
                + "; ".join(f"`{key}` ({reason})" for key, reason in entry["skipped_measures"].items())
                + ".",
                "",
            ]
        lines += [f"![{entry['title']}]({entry['plot']})", ""]

    correlation = results["correlation"]
    lines += [
        "## Pearson correlation (Table 5)",
        "",
        f"On the {correlation['num_rows']} rows of {results['model']} where every listed value is defined "
        f"({correlation['rows_with_nulls_dropped']} rows with a null dropped). SAM score and entropies are those "
        "of the best output; *True* columns are the store's targets, *USAM* ones the heads' outputs.",
        "",
    ]
    if correlation["left_out"]:
        lines += [
            "Left out: " + "; ".join(f"`{key}` ({reason})" for key, reason in correlation["left_out"].items()) + ".",
            "",
        ]
    if correlation["names"]:
        labels = correlation["labels"]
        lines.append("| | " + " | ".join(labels) + " |")
        lines.append("|---|" + "---:|" * len(labels))
        for label, row in zip(labels, correlation["matrix"], strict=True):
            cells = ["–" if value is None or not math.isfinite(value) else f"{value:.2f}" for value in row]
            lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
        lines += ["", f"![Pearson correlation]({correlation['plot']})", ""]

    lines += ["## Token ablation", ""]
    ablation = results["ablation"]
    if ablation is None:
        lines += ["Not run (`ablation=False`).", ""]
    elif ablation["status"] != "done":
        lines += [f"Not done: {ablation['reason']}.", ""]
    else:
        protocol = ablation["protocol"]
        lines += [
            f"The images of the store are split at random (seed {protocol['seed']}): "
            f"{protocol['train_images']} train the heads and {protocol['test_images']} "
            f"({protocol['test_fraction']:.0%}) score them; no image is on both sides. For each variant the "
            "heads of the four scenarios are trained from scratch with usam.training on the training images "
            f"({protocol['rows']}), keeping each head's epoch with the best loss on "
            f"{protocol['validation_fraction_of_training_images']:.0%} of the training images; hyper-parameters: "
            f"{protocol['hyper_parameter_source']}. Mask tokens are paired as `{protocol['pairing']}`. "
            "Scores are relative AUC (%) on the test images' objects; *Provided heads* are the evaluated heads "
            "file on the same objects (they may have been trained on them).",
            "",
            "| Scenario | Head | Test objects | IoU token only | Mask token only | Both tokens | Provided heads "
            "| SAM score | Random |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        columns = ["iou_token", "mask_token", "both", "provided_heads", "sam_score", "random"]
        for name, entry in ablation["scenarios"].items():
            title = results["scenarios"][name]["title"]
            if entry["status"] != "done":
                lines.append(f"| {title} | – | – | " + " | ".join(["–"] * len(columns)) + " |")
                continue
            cells = []
            for column in columns:
                score = entry["scores"].get(column)
                if score is None:
                    cells.append("–")
                    continue
                aucs = score["relative_auc_percent"]
                cells.append(f"{_format_percent(aucs['r_0_1'])} / {_format_percent(aucs['r_0_0.5'])}")
            lines.append(f"| {title} | `{entry['head']}` | {entry['num_test_objects']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Each cell: relative AUC over r ∈ [0, 1] / over r ∈ [0, 0.5].",
            "",
            f"![Token ablation]({ablation['plot']})",
            "",
        ]
    lines += ["All numbers, including every curve, are in `results.json`.", ""]
    return "\n".join(lines)


# JSON ------------------------------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    """A copy with NaN and infinity as None and numpy scalars as Python numbers (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
