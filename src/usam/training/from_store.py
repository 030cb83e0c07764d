"""From a token store to a heads file: :func:`train_from_store`, the entry point of ``usam train``.

It checks the output path before anything is read, opens the store once (:class:`usam.store.StoreReader`), chooses
the defaults of a preset (``paper``: pooled size heads and the authors' tie rule; a tie rule the store records wins
over the preset's), infers whose paper hyper-parameters fit the store's dataset, optionally tunes them per
head (the paper's recipe) or takes usam's recipe (:mod:`usam.training.recipes`), trains and writes the heads with
:meth:`usam.heads.UncertaintyHeads.save` (atomically).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from usam.devices import Precision, select_device
from usam.errors import InvalidInputError
from usam.head_table import Pairing
from usam.heads import TOKEN_INPUTS
from usam.presets import PRESETS, Preset, TieRule
from usam.training.data import DEFAULT_VALIDATION_FRACTION, check_validation_fraction
from usam.training.hyper_parameters import (
    HPO_SEARCH_SPACE,
    HyperParameters,
    check_paper_dataset,
    defaults_for_datasets,
    paper_hyper_parameters,
)
from usam.training.loading import TrainingWarning, load_training_data
from usam.training.loop import train_heads
from usam.training.recipes import USAM_HYPER_PARAMETERS, Recipe, recipe_hyper_parameters
from usam.training.tuning import SEARCH_METHOD, search_seed, tune_hyper_parameters
from usam.validation import check_choice, check_int

POOL_SIZES: dict[Preset, bool] = {Preset.USAM: False, Preset.PAPER: True}
"""Whether a preset pools the ``iou_<size>`` heads over all models' rows (the paper does)."""


def train_from_store(
    store: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    heads: Sequence[str] | None = None,
    pairing: Pairing | str = Pairing.TRUE,
    models: Sequence[str] | None = None,
    hpo_trials: int = 0,
    dataset_defaults: str | None = None,
    seed: int = 0,
    preset: Preset | str = Preset.USAM,
    pool_sizes: bool | None = None,
    tie_rule: TieRule | str | None = None,
    progress: bool = True,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    inputs: Sequence[str] = TOKEN_INPUTS,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.FLOAT32,
    log: Callable[[str], None] | None = None,
    recipe: Recipe | str | None = None,
    hyper_parameters: HyperParameters | None = None,
) -> Path:
    """Train heads on a token store and write them to a heads file (:func:`usam.load_heads` reads it).

    Args:
        store: The token store directory.
        out_path: The heads file to write (``.safetensors``); its folder is created if missing.
        heads: Heads to train (default: every head with rows in the store).
        pairing: ``"true"`` or ``"as-released"``.
        models: Use only rows of these models (default: all in the store).
        hpo_trials: If > 0, tune each head's paper-recipe hyper-parameters with this many Optuna trials first.
        dataset_defaults: ``"coco"``, ``"ade20k"``, ``"sa-v"`` or ``"davis"``: whose paper hyper-parameters (the
            ``paper`` recipe).
            Default: inferred from the store's ``dataset`` column (COCO's, with a :class:`TrainingWarning`, for
            datasets the paper did not tune on).
        seed: Seed of split, initialisation, shuffling and search.
        preset: ``"usam"`` or ``"paper"``: the defaults of ``pool_sizes`` and ``tie_rule``.
        pool_sizes: Train each ``iou_<size>`` head on all models' rows with that size's IoU of the same object
            (default: the preset's; the paper pools).
        tie_rule: Which of equally good masks gives the mask token. Default: the one the store records
            (:attr:`usam.store.StoreReader.tie_rule`), else the preset's.
        progress: Show progress bars.
        validation_fraction: Fraction of images held out for validation.
        inputs: What the heads read (ablations: ``["iou_token"]`` or ``["mask_token"]``; SAM2's scalar signals:
            :data:`usam.heads.INPUTS_OF_VARIANT` of ``"signals"`` or ``"tokens+signals"``, a store of schema
            version 2).
        cache_dir: Memory-map the features from a file in this directory (for stores larger than the RAM).
        device: Where to train (default: CUDA when available, else the CPU).
        precision: ``"float32"``, or ``"bfloat16"`` for mixed precision (see :class:`usam.devices.Precision`).
        log: Called with one line per hyper-parameter trial (see :func:`tune_hyper_parameters`).
        recipe: ``"usam"`` (AdamW, warm-up, cosine, early stopping) or ``"paper"`` (the paper's SGD values).
        hyper_parameters: Train every head with these instead of a recipe's (e.g. usam's recipe on a shorter
            schedule); recorded as given. Not with ``hpo_trials``, ``dataset_defaults`` or ``recipe``.
            Default: ``"usam"``, or ``"paper"`` with ``hpo_trials`` or ``dataset_defaults`` (both are the paper's).

    Returns:
        The path of the written heads file.

    Raises:
        StoreError: If the store cannot be read or records an unknown tie rule.
        InvalidInputError: If an argument or the output path is invalid, or the data do not allow training.
    """
    from usam.store import StoreReader

    hpo_trials = check_int(hpo_trials, "hpo_trials", minimum=0)
    check_int(seed, "seed", minimum=0)
    check_validation_fraction(validation_fraction)
    precision = check_choice(Precision, precision, "precision")
    preset = check_choice(Preset, preset, "preset")
    paper_only = "hpo trials" if hpo_trials else "dataset_defaults" if dataset_defaults is not None else None
    if hyper_parameters is not None and (paper_only or recipe is not None):
        chosen = paper_only or "a recipe"
        raise InvalidInputError(f"hyper_parameters replace the recipe's; pass either them or {chosen}, not both")
    if hyper_parameters is not None and not isinstance(hyper_parameters, HyperParameters):
        raise InvalidInputError(
            f"hyper_parameters must be a usam.training.HyperParameters, got {type(hyper_parameters).__name__}"
        )
    if recipe is None:
        recipe = Recipe.PAPER if paper_only else Recipe.USAM
    recipe = check_choice(Recipe, recipe, "recipe")
    if paper_only and recipe != Recipe.PAPER:
        raise InvalidInputError(f"{paper_only} belong to the paper's recipe; pass recipe 'paper' (--recipe paper)")
    if tie_rule is not None:
        tie_rule = check_choice(TieRule, tie_rule, "tie_rule")
    choices: dict[str, Any] = {
        "recipe": "given" if hyper_parameters is not None else str(recipe),
        "preset": str(preset),
        "pool_sizes": POOL_SIZES[preset] if pool_sizes is None else bool(pool_sizes),
    }
    if dataset_defaults is not None:
        # Checked even when a search replaces them, so that a misspelt dataset name is reported either way.
        check_paper_dataset(dataset_defaults)
    device = select_device(device)  # before reading the store, so that a wrong device fails at once
    out = check_output_path(out_path, [store])
    reader = StoreReader(store)
    if tie_rule is None:
        tie_rule = reader.tie_rule or PRESETS[preset].tie_rule
    choices["tie_rule"] = str(tie_rule)
    data = load_training_data(
        reader,
        heads,
        pairing=pairing,
        models=models,
        pool_sizes=choices["pool_sizes"],
        inputs=inputs,
        cache_dir=cache_dir,
        tie_rule=choices["tie_rule"],
    )
    if hyper_parameters is not None:
        source: dict[str, Any] = {"method": "given", "values": hyper_parameters.to_dict()}
        hyper = dict.fromkeys(data.head_names, hyper_parameters)
    elif recipe == Recipe.USAM:
        source = {"method": "usam recipe", "values": USAM_HYPER_PARAMETERS.to_dict()}
        hyper = recipe_hyper_parameters(recipe, "coco", data.head_names)
    else:
        source = _hyper_parameter_source(dataset_defaults, data.source.get("datasets", []), warn=not hpo_trials)
        hyper = paper_hyper_parameters(source["dataset"], data.head_names)
    hpo_record: dict[str, Any] = {}
    for name in data.head_names if hpo_trials else []:
        hyper[name] = tune_hyper_parameters(
            data,
            name,
            hpo_trials,
            seed,
            validation_fraction=validation_fraction,
            progress=progress,
            device=device,
            precision=precision,
            log=log,
        )
        hpo_record[name] = hyper[name].to_dict()
    heads_module, report = train_heads(
        data,
        hyper_parameters=hyper,
        seed=seed,
        validation_fraction=validation_fraction,
        progress=progress,
        device=device,
        precision=precision,
    )
    report.update(choices)
    if hpo_trials:
        report["hyper_parameter_source"] = {
            "method": SEARCH_METHOD,
            "trials_per_head": hpo_trials,
            "seed": seed,
            "sampler_seeds": {name: search_seed(seed, name) for name in data.head_names},
            "search_space": {
                "lr": [*HPO_SEARCH_SPACE["lr"], "log"],
                "epochs": list(HPO_SEARCH_SPACE["epochs"]),
                "batch_size": list(HPO_SEARCH_SPACE["batch_size"]),
                "momentum": list(HPO_SEARCH_SPACE["momentum"]),
            },
            "objective": "best validation MSE",
            "chosen": hpo_record,
        }
    else:
        report["hyper_parameter_source"] = source
    heads_module.metadata.training = report
    return heads_module.save(out)


def check_output_path(out_path: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """Check that a file can be written at ``out_path`` before any work is done.

    Args:
        out_path: The file to write; missing folders above it are created when it is written.
        inputs: Files or folders the run reads; the output may be none of them nor lie inside one.

    Returns:
        The output path, with ``~`` expanded.

    Raises:
        InvalidInputError: If the path is a folder, lies in or is one of the inputs, or its nearest existing
            folder is not a folder or not writable.
    """
    path = Path(out_path).expanduser()
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder; give the heads file to write, e.g. {path / 'heads.safetensors'}")
    resolved = path.resolve()
    for source in inputs:
        source_path = Path(source).expanduser().resolve()
        if resolved == source_path or source_path in resolved.parents:
            raise InvalidInputError(
                f"the heads file {path} would be written into the input {source}; write it elsewhere"
            )
    existing = next(folder for folder in resolved.parents if folder.exists())
    if not existing.is_dir():
        raise InvalidInputError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"cannot write {path}: the folder {existing} is not writable; choose another path")
    return path


def _hyper_parameter_source(given: str | None, datasets: Sequence[str], warn: bool) -> dict[str, str]:
    """Whose paper hyper-parameters train the heads, and why: the given dataset, or the store's."""
    if given is not None:
        return {"method": "paper defaults", "dataset": check_paper_dataset(given), "chosen_by": "given"}
    defaults = defaults_for_datasets(datasets)
    if warn and defaults.fallback:
        warnings.warn(
            f"using COCO's paper hyper-parameters: {defaults.reason}; choose others with dataset_defaults "
            "(--dataset-defaults)",
            TrainingWarning,
            stacklevel=3,
        )
    reason = defaults.reason + ("; COCO's, the paper's main image dataset" if defaults.fallback else "")
    return {"method": "paper defaults", "dataset": defaults.dataset, "chosen_by": f"inferred from {reason}"}
