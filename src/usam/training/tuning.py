"""Hyper-parameter search for one head with Optuna's seeded TPE sampler over the paper's search space.

Each head searches with its own random stream (derived from the run's seed and the head's name), so heads tuned in
one run try different hyper-parameters, and a head's search does not depend on which other heads are tuned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from usam.devices import Precision
from usam.errors import InvalidInputError
from usam.training.data import DEFAULT_VALIDATION_FRACTION, TrainingData
from usam.training.hyper_parameters import DEFAULT_WEIGHT_DECAY, HPO_SEARCH_SPACE, HyperParameters
from usam.training.loop import fit
from usam.training.seeds import Stream, derived_seed
from usam.validation import check_int

SEARCH_METHOD = "optuna TPESampler"


def search_seed(seed: int, head: str) -> int:
    """The seed of a head's sampler in a run with ``seed`` (Optuna's samplers take 32-bit seeds).

    Example:
        >>> search_seed(0, "iou_tiny") != search_seed(0, "iou_large")
        True
    """
    return derived_seed(seed, Stream.SEARCH, head) % 2**32


def tune_hyper_parameters(
    data: TrainingData,
    head: str,
    trials: int,
    seed: int = 0,
    *,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    hidden_dim: int = 512,
    progress: bool = False,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.FLOAT32,
    log: Callable[[str], None] | None = None,
) -> HyperParameters:
    """Search the paper's space (:data:`HPO_SEARCH_SPACE`) for one head with Optuna's seeded TPE sampler.

    Every trial trains the head alone on the same by-image split and scores its best validation MSE.

    Args:
        data: Training data containing the head.
        head: The head to tune.
        trials: Number of trials (at least 1).
        seed: Seeds the split and each trial's training; the head's sampler gets :func:`search_seed`.
        validation_fraction: Fraction of images held out (must be > 0).
        weight_decay: Weight decay of every trial (not searched, as in the paper).
        hidden_dim: Width of the heads' hidden layers.
        progress: Show a progress bar over the trials.
        device: Where to train (see :func:`~usam.training.loop.train_heads`).
        precision: ``"float32"`` or ``"bfloat16"`` (see :class:`usam.devices.Precision`).
        log: Called with one line per finished trial (head, trial number, validation MSE, hyper-parameters),
            whether or not a progress bar is shown.

    Returns:
        The best trial's hyper-parameters.

    Raises:
        InvalidInputError: If ``trials`` < 1, the head is not in the data or the validation fraction is 0.
    """
    check_int(trials, "trials", minimum=1)
    check_int(seed, "seed", minimum=0)
    if validation_fraction <= 0:
        raise InvalidInputError("hyper-parameter search needs validation data; use validation_fraction > 0")
    single = data.subset([head])
    try:
        import optuna
    except ImportError as error:
        raise InvalidInputError("hyper-parameter search needs optuna: pip install 'usam[train]'") from error

    def objective(trial: optuna.Trial) -> float:
        hyper = HyperParameters(
            lr=trial.suggest_float("lr", *HPO_SEARCH_SPACE["lr"], log=True),
            epochs=trial.suggest_int("epochs", *map(int, HPO_SEARCH_SPACE["epochs"])),
            batch_size=trial.suggest_int("batch_size", *map(int, HPO_SEARCH_SPACE["batch_size"])),
            momentum=trial.suggest_float("momentum", *HPO_SEARCH_SPACE["momentum"]),
            weight_decay=weight_decay,
        )
        _, report = fit(single, hyper, seed, validation_fraction, False, hidden_dim, device, precision)
        best = report["heads"][head]["best_validation_mse"]
        # A diverged trial is the worst possible rather than a failure, so the search goes on.
        return math.inf if best is None else best

    from tqdm.auto import tqdm

    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = optuna.samplers.TPESampler(seed=search_seed(seed, head))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        with tqdm(total=trials, desc=f"tuning {head}", unit="trial", disable=not progress) as bar:

            def report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                bar.update(1)
                bar.set_postfix_str(f"best val MSE {study.best_value:.5f}")
                if log is not None:
                    log(trial_line(head, trial.number + 1, trials, trial.value, trial.params))

            study.optimize(objective, n_trials=trials, callbacks=[report_trial])
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
    best = study.best_params
    return HyperParameters(
        lr=float(best["lr"]),
        epochs=int(best["epochs"]),
        batch_size=int(best["batch_size"]),
        momentum=float(best["momentum"]),
        weight_decay=weight_decay,
    )


def trial_line(head: str, number: int, trials: int, value: float | None, params: dict[str, float | int]) -> str:
    """One line about a finished trial, e.g. ``tuning iou_tiny: trial 2/20 val MSE 0.01234 (lr 0.0031, ...)``.

    Example:
        >>> trial_line("task_gap", 1, 5, 0.25, {"lr": 0.01, "epochs": 7})
        'tuning task_gap: trial 1/5 val MSE 0.25000 (lr 0.01, epochs 7)'
    """
    score = "diverged" if value is None or not math.isfinite(value) else f"val MSE {value:.5f}"
    values = ", ".join(
        f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}" for key, value in params.items()
    )
    return f"tuning {head}: trial {number}/{trials} {score} ({values})"
