"""``run_evaluation``: read a store, run the heads, score every scenario, and write the report, JSON and plots.

Files are written atomically (:mod:`usam.files`). The PNGs an earlier evaluation listed in the folder's
``results.json`` are removed once the new report is written, so no stale plot stays next to it; files usam did not
write are never touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from usam.errors import InvalidInputError
from usam.evaluation.ablation import AblationResult, HyperParameterChoice, check_hyper_parameters_type, run_ablation
from usam.evaluation.correlation import CorrelationResult, correlation_table
from usam.evaluation.departures import RunDeparture, RunFacts, has_random_weights, recorded_choices, run_departures
from usam.evaluation.measures import Measure, off_distribution_note, scenario_measures
from usam.evaluation.plots import remove_earlier_plots, write_plots
from usam.evaluation.reliability import CalibrationCheck, check_calibration
from usam.evaluation.report import report_markdown
from usam.evaluation.rows import EvaluatedModels, read_rows, resolve_models, size_and_version, store_models
from usam.evaluation.scenarios import (
    AUC_RANGES,
    ScenarioObjects,
    ScenarioResult,
    curve_json,
    evaluate_scenario,
    scenario_objects,
    skipped_scenario,
)
from usam.files import remove_stale_temporaries, write_json_atomically, write_text_atomically
from usam.head_table import SIZE_TARGETS_KEY, size_targets_of
from usam.heads import UncertaintyHeads, inputs_variant, load_heads
from usam.metrics import CORRECTION_SCENARIOS, DEFAULT_NUM_POINTS
from usam.presets import PRESETS, Preset
from usam.store import StoreReader
from usam.validation import check_choice, check_int

REPORT_FILE = "report.md"
"""Name of the Markdown report in the output folder."""
RESULTS_FILE = "results.json"
"""Name of the JSON results in the output folder."""


@dataclasses.dataclass
class EvaluationResult:
    """Everything an evaluation measured; :meth:`to_json` is the content of ``results.json``.

    Attributes:
        usam_version: usam version that ran the evaluation.
        store: The token store.
        heads: The heads file.
        heads_metadata: Names, pairing, inputs, SAM2 version and size targets of the heads.
        models: The evaluated model and the tiny and large models of its SAM2 version.
        preset: The preset whose defaults the run used.
        num_rows: Rows read per model.
        seeds: Random orders averaged for the random baseline.
        fractions: Fractions of objects corrected at which every curve is evaluated.
        warnings: Caveats about the whole run (heads trained on this store, random heads, ...).
        scenarios: Each correction scenario's result.
        correlation: The Pearson table.
        ablation: The token ablation, or None if not run.
        departures: Each deliberate difference from the paper, with what this run used.
        store_choices: Choices the store's metadata records (preset, tie rule, precision, ...).
        files: Files written into the output folder.
        calibration: ECE of every IoU head before (and, for calibrated heads, after) calibration and the coverage
            of the IoU lower bounds on this store's rows, or None if no IoU head has rows here.
    """

    usam_version: str
    store: str
    heads: str
    heads_metadata: dict[str, Any]
    models: EvaluatedModels
    preset: Preset
    num_rows: dict[str, int]
    seeds: int
    fractions: np.ndarray
    warnings: list[str]
    scenarios: dict[str, ScenarioResult]
    correlation: CorrelationResult
    ablation: AblationResult | None
    departures: list[RunDeparture]
    store_choices: dict[str, str]
    files: list[str] = dataclasses.field(default_factory=list)
    calibration: CalibrationCheck | None = None

    @property
    def model(self) -> str:
        """The evaluated model."""
        return self.models.evaluated

    def to_json(self) -> dict[str, Any]:
        """The result as strict-JSON data (non-finite numbers as null), as written to ``results.json``."""
        return {
            "usam_version": self.usam_version,
            "store": self.store,
            "heads": self.heads,
            "heads_metadata": self.heads_metadata,
            "model": self.model,
            "models_used": {"evaluated": self.models.evaluated, "tiny": self.models.tiny, "large": self.models.large},
            "preset": str(self.preset),
            "num_rows": dict(self.num_rows),
            "seeds": self.seeds,
            "auc_ranges": {key: [0.0, value] for key, value in AUC_RANGES.items()},
            "relative_auc_definition": (
                "100 * (AUC - AUC_no_correction) / (AUC_oracle - AUC_no_correction), in percent, "
                "trapezoidal AUC of the mean IoU over the fraction r of objects corrected"
            ),
            "fractions": curve_json(self.fractions),
            "evaluated_mask": (
                "best of the three multimask outputs (argmax mask_ious); SAM's pick (argmax sam_scores) for the "
                "SAM score and entropies of task supervision; heads read the best output's mask token"
            ),
            "warnings": list(self.warnings),
            "scenarios": {name: entry.to_json() for name, entry in self.scenarios.items()},
            "correlation": self.correlation.to_json(),
            "ablation": None if self.ablation is None else self.ablation.to_json(),
            "differences_from_paper": [row.to_json() for row in self.departures],
            "store_choices": dict(self.store_choices),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "files": list(self.files),
        }


def run_evaluation(
    store: str | os.PathLike[str],
    heads_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    model: str | None = None,
    preset: Preset | str = Preset.USAM,
    seeds: int = 10,
    ablation: bool = True,
    ablation_hyper_parameters: HyperParameterChoice = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluate heads and baseline measures on a token store and write a report with plots.

    See :mod:`usam.evaluation` for which rows, masks and measures each scenario uses.

    Args:
        store: Token store directory (:mod:`usam.store`).
        heads_path: Heads file or the authors' heads folder (:func:`usam.load_heads`).
        out_dir: Folder for ``report.md``, ``results.json`` and the PNGs; created if missing. Files of an earlier
            evaluation there are replaced, and its plots that this run does not draw are removed.
        model: SAM2 size to evaluate (``tiny``, ``small``, ``base-plus``, ``large``), or a full model name such as
            ``sam2.1-tiny`` when the store holds several SAM2 versions of that size. Default: the preset's
            (``tiny`` for ``usam``, ``large`` for ``paper``, as the paper's correlation table).
        preset: ``usam`` or ``paper`` (:data:`usam.presets.PRESETS`); sets the default model.
        seeds: Number of seeded random orders averaged for the random baseline.
        ablation: Train heads on the IoU token only, the mask token only and both, and score them.
        ablation_hyper_parameters: Training of the ablation's heads: one set for all heads, one per head, or
            None for the paper's hyper-parameters of the store's dataset (COCO's if it is not one of the paper's).
        progress: Show progress bars.

    Returns:
        Everything measured; its :meth:`~EvaluationResult.to_json` is what ``results.json`` holds.

    Raises:
        InvalidInputError: If an argument is invalid, the store has no rows of the requested model, or the
            heads do not fit the store's tokens.
        StoreError: If the store cannot be read.
        HeadsFileError: If the heads file cannot be read.
    """
    preset = check_choice(Preset, preset, "preset")
    seeds = check_int(seeds, "seeds (random orders to average)", minimum=1)
    check_hyper_parameters_type(ablation_hyper_parameters)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"the output {out_dir} is a file; give a folder for the report and plots")
    store = Path(store).expanduser()
    heads = load_heads(heads_path)
    reader = StoreReader(store)
    models = resolve_models(model or PRESETS[preset].evaluation_model, store_models(reader), store)
    rows = read_rows(reader, models, heads, keep_features=ablation, progress=progress)
    metadata = reader.options

    fractions = np.linspace(0.0, 1.0, DEFAULT_NUM_POINTS)
    scenario_models = {
        "model_selection": (models.tiny, models.large),
        "prompt_refinement": (models.evaluated, None),
        "task_supervision": (models.evaluated, None),
        "segmentation_uncertainty": (models.evaluated, None),
    }
    scenarios: dict[str, ScenarioResult] = {}
    objects_of: dict[str, ScenarioObjects] = {}
    measures_of: dict[str, list[Measure]] = {}
    for scenario in CORRECTION_SCENARIOS:
        base_model, corrected_model = scenario_models[scenario.name]
        if base_model is None or (scenario.corrected_model is not None and corrected_model is None):
            needed = f"{scenario.base_model} and {scenario.corrected_model}"
            reason = f"the store has no rows of the {needed} models of {models.evaluated}'s SAM2 version"
            scenarios[scenario.name] = skipped_scenario(scenario, reason)
            continue
        objects = scenario_objects(rows, scenario, base_model, corrected_model)
        if objects.base_rows.size == 0:
            scenarios[scenario.name] = skipped_scenario(scenario, "no object has all the rows it needs")
            continue
        base_size = size_and_version(base_model)[0]
        measures = scenario_measures(
            scenario, base_size, size_and_version(corrected_model or base_model)[0], _inputs_name(heads)
        )
        notes = {
            m.key: note for m in measures if (note := off_distribution_note(m, base_size, heads.metadata.training))
        }
        objects_of[scenario.name], measures_of[scenario.name] = objects, measures
        scenarios[scenario.name] = evaluate_scenario(
            scenario, objects, measures, rows, (base_model, corrected_model), fractions, seeds,
            notes=notes, store_metadata=metadata,
        )  # fmt: skip

    ablation_result = None
    if ablation:
        base_models = {name: scenario_models[name][0] for name in objects_of}
        ablation_result = run_ablation(rows, objects_of, measures_of, base_models, models, heads,
                                       ablation_hyper_parameters, fractions, seeds, progress)  # fmt: skip

    from usam import __version__

    calibration = check_calibration(reader, heads)
    size, version = size_and_version(models.evaluated)
    result = EvaluationResult(
        usam_version=__version__,
        store=str(store),
        heads=str(Path(heads_path).expanduser()),
        heads_metadata=_heads_description(heads),
        models=models,
        preset=preset,
        num_rows={name: int(np.count_nonzero(rows.model == name)) for name in models.read_models},
        seeds=seeds,
        fractions=fractions,
        warnings=_warnings(heads, heads_path, store, models.evaluated),
        scenarios=scenarios,
        correlation=correlation_table(rows, models.evaluated, heads.names),
        ablation=ablation_result,
        departures=run_departures(RunFacts(version, size, metadata, heads.metadata)),
        store_choices=recorded_choices(metadata),
        calibration=calibration,
    )
    if calibration is not None and calibration.calibration_store and _same_path(calibration.calibration_store, store):
        result.warnings.append(
            "The heads were calibrated on this store: the calibration's ECE and the coverage of its bounds are "
            "measured on their own calibration rows. Evaluate on a store of another split."
        )
    write_outputs(result, out_dir)
    return result


def write_outputs(result: EvaluationResult, out_dir: Path) -> None:
    """Write the plots, ``results.json`` and ``report.md`` of an evaluation; then remove an earlier run's plots.

    Args:
        result: The evaluation; its plot and file names are filled in.
        out_dir: The report folder (created if missing).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    earlier = _earlier_files(out_dir)
    plots = write_plots(result, out_dir)
    result.files = [REPORT_FILE, RESULTS_FILE, *plots]
    write_json_atomically(result.to_json(), out_dir / RESULTS_FILE, indent=1)
    write_text_atomically(out_dir / REPORT_FILE, report_markdown(result))
    remove_earlier_plots(out_dir, [name for name in earlier if name not in plots])


def _earlier_files(out_dir: Path) -> list[str]:
    """The files an earlier evaluation in ``out_dir`` listed in its ``results.json`` (none if it is unreadable)."""
    try:
        files = json.loads((out_dir / RESULTS_FILE).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [name for name in files if isinstance(name, str)] if isinstance(files, list) else []


def _inputs_name(heads: UncertaintyHeads) -> str:
    """The heads' inputs variant (``tokens``, ``signals``, ``tokens+signals``), or their parts joined by ``+``."""
    variant = inputs_variant(heads.metadata.inputs)
    return str(variant) if variant is not None else "+".join(heads.metadata.inputs)


def _same_path(recorded: str, store: Path) -> bool:
    return Path(recorded).expanduser().resolve() == store.resolve()


def _heads_description(heads: UncertaintyHeads) -> dict[str, Any]:
    return {
        "names": list(heads.names),
        "pairing": str(heads.metadata.pairing),
        "inputs": list(heads.metadata.inputs),
        "inputs_variant": _inputs_name(heads),
        "sam2_version": heads.metadata.sam2_version,
        SIZE_TARGETS_KEY: size_targets_of(heads.metadata.training),
    }


def _warnings(heads: UncertaintyHeads, heads_path: str | os.PathLike[str], store: Path, model: str) -> list[str]:
    notes = []
    training: Mapping[str, Any] = heads.metadata.training or {}
    data = training.get("data")
    trained_on = data.get("store") if isinstance(data, Mapping) else None
    if trained_on and _same_path(trained_on, store):
        notes.append(
            "The heads were trained on this store: the heads' numbers are measured on (at least partly) their "
            "own training data and overstate how well they generalise. Evaluate on a store of another split."
        )
    version = size_and_version(model)[1]
    if heads.metadata.sam2_version and version and heads.metadata.sam2_version != version:
        notes.append(f"The heads were trained for {heads.metadata.sam2_version}, the evaluated rows come from {model}.")
    if has_random_weights(heads.metadata):
        notes.append(f"The heads in {heads_path} have random weights: their numbers mean nothing.")
    return notes
