"""Fitting heads: :func:`train_heads` and the validation metrics of :func:`regression_metrics`.

:func:`train_heads` fits all heads of some training data together and keeps, per head, the epoch with the best
validation loss.

The loss is the MSE of the sigmoid output; the optimiser is the head's (:class:`HyperParameters`): the paper's SGD
with momentum and weight decay, or AdamW with warm-up, cosine schedule and early stopping (usam's recipe, see
:mod:`usam.training.recipes`). Unlike the paper's code, rows are shuffled every epoch, the validation set is split off
by image (an image's rows are never on both sides) and the epoch with the best validation loss is kept per head.
Heads with the same batch size, epoch count, optimizer and schedule train as one group in the fused step of
:mod:`usam.training.kernel`; a group stops when each of its heads has run out of patience.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from usam import metrics
from usam.devices import Precision, select_device
from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.heads import HeadsMetadata, UncertaintyHeads
from usam.training.data import DEFAULT_VALIDATION_FRACTION, TrainingData, split_by_image
from usam.training.hyper_parameters import HyperParameters, Optimizer, hyper_parameters_per_head
from usam.training.kernel import GroupWorkspace, HeadPlan, epoch_batches, loss_dtype
from usam.training.seeds import Stream, derived_seed
from usam.validation import check_choice, check_int

# Validation rows are predicted in chunks of this many rows per head, bounding the activations' memory.
_PREDICT_CHUNK_ROWS = 2048


def train_heads(
    data: TrainingData,
    *,
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters,
    seed: int = 0,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    progress: bool = True,
    hidden_dim: int = 512,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.FLOAT32,
) -> tuple[UncertaintyHeads, dict[str, Any]]:
    """Train all heads of the data together and keep, per head, the epoch with the best validation loss.

    Args:
        data: Inputs and targets, e.g. from :func:`~usam.training.loading.load_training_data`.
        hyper_parameters: One set for all heads, or one per head name.
        seed: Seeds the split, the initial weights and the shuffling; the same seed gives the same weights.
        validation_fraction: Fraction of the images held out (0: train on everything and keep the last epoch).
        progress: Show a progress bar with the losses.
        hidden_dim: Width of the heads' hidden layers (512 in the paper).
        device: Where to train (default: CUDA when available, else the CPU). The features are copied there.
        precision: ``"float32"``, or ``"bfloat16"`` for mixed precision (see :class:`usam.devices.Precision`).

    Returns:
        The trained heads (in evaluation mode, on the CPU, in the data's head order) and the training report, which is
        also stored as ``heads.metadata.training``: data, pairing, hyper-parameters, best epoch, loss history
        and validation metrics (MSE, MAE, R², Pearson, on the sigmoid output) per head, seed, split.

    Raises:
        InvalidInputError: If hyper-parameters are missing for a head, a head has no training or no
            validation rows, or a head diverges (non-finite loss; lower its learning rate).
    """
    heads, report = fit(data, hyper_parameters, seed, validation_fraction, progress, hidden_dim, device, precision)
    diverged = [name for name, entry in report["heads"].items() if entry["best_epoch"] is None]
    if diverged:
        detail = ", ".join(f"{name} (lr {report['heads'][name]['hyper_parameters']['lr']:.3g})" for name in diverged)
        raise InvalidInputError(
            f"training diverged (non-finite loss) for {detail}; lower the learning rate of these heads"
        )
    return heads, report


def fit(
    data: TrainingData,
    hyper_parameters: Mapping[str, HyperParameters] | HyperParameters,
    seed: int,
    validation_fraction: float,
    progress: bool,
    hidden_dim: int,
    device: str | torch.device | None = None,
    precision: Precision | str = Precision.FLOAT32,
) -> tuple[UncertaintyHeads, dict[str, Any]]:
    """Train all heads of the data together, as :func:`train_heads`, but report diverged heads instead of raising.

    A diverged head has ``best_epoch`` None in the report (hyper-parameter search scores it as the worst trial).
    """
    started = time.perf_counter()
    check_int(seed, "seed", minimum=0)
    precision = check_choice(Precision, precision, "precision")
    device = select_device(device)
    check_int(hidden_dim, "hidden_dim", minimum=1)
    names = data.head_names
    hyper = hyper_parameters_per_head(hyper_parameters, names)
    is_validation_image = split_by_image(data, validation_fraction, seed)
    plans = []
    for name in names:
        head = data.heads[name]
        held_out = is_validation_image[data.image_ids[head.rows]]
        plan = HeadPlan(
            name=name,
            hyper=hyper[name],
            train_rows=head.rows[~held_out],
            train_targets=head.targets[~held_out],
            validation_rows=head.rows[held_out],
            validation_targets=head.targets[held_out],
        )
        if plan.train_rows.size == 0 or (validation_fraction > 0 and plan.validation_rows.size == 0):
            side = "training" if plan.train_rows.size == 0 else "validation"
            raise InvalidInputError(
                f"head {name} has no {side} rows: its {head.rows.size} row(s) come from too few images for a "
                f"{validation_fraction:.0%} validation split; add images or change validation_fraction"
            )
        plans.append(plan)

    features = _features_tensor(data.features).to(device)
    groups: dict[tuple[Any, ...], list[HeadPlan]] = {}
    for plan in plans:
        groups.setdefault(_group_key(plan.hyper), []).append(plan)
    total_steps = sum(
        members[0].hyper.epochs * math.ceil(max(plan.train_rows.size for plan in members) / members[0].hyper.batch_size)
        for members in groups.values()
    )
    from tqdm.auto import tqdm

    results: dict[str, dict[str, Any]] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    with tqdm(total=total_steps, desc=f"training {len(names)} head(s)", unit="step", disable=not progress) as bar:
        for group_index, key in enumerate(sorted(groups)):
            members = sorted(groups[key], key=lambda plan: (-plan.train_rows.size, HEAD_NAMES.index(plan.name)))
            label = f"group {group_index + 1}/{len(groups)}" if len(groups) > 1 else ""
            group_results, group_module = _train_group(members, data, features, seed, hidden_dim, precision, bar, label)
            results.update(group_results)
            for plan in members:
                states[plan.name] = group_module.head_state_dict(plan.name)

    metadata = HeadsMetadata(
        names=names,
        token_dim=data.token_dim,
        hidden_dim=hidden_dim,
        inputs=list(data.inputs),
        pairing=data.pairing,
        sam2_version=data.sam2_version,
        signal_normalization=data.signal_normalization,
    )
    heads = UncertaintyHeads(metadata)
    for name in names:
        heads.load_head_state_dict(name, states[name])
    heads.eval()
    heads.requires_grad_(False)

    from usam import __version__

    report: dict[str, Any] = {
        "trainer": f"usam {__version__} (usam.training)",
        "data": {
            **data.source,
            "rows": {name: int(data.heads[name].rows.size) for name in names},
            "train_rows": {plan.name: int(plan.train_rows.size) for plan in plans},
            "validation_rows": {plan.name: int(plan.validation_rows.size) for plan in plans},
        },
        "pairing": data.pairing,
        "inputs": list(data.inputs),
        "seed": seed,
        "validation_fraction": validation_fraction,
        "split": "by image",
        "train_images": int((~is_validation_image).sum()),
        "validation_images": int(is_validation_image.sum()),
        "loss": "MSE of the sigmoid output (gap heads: target clip(gap + 0.5, 0, 1))",
        "optimizer": _optimizer_description([plan.hyper for plan in plans]),
        "precision": str(precision),
        "device": str(device),
        "heads": {name: results[name] for name in names},
        "seconds": round(time.perf_counter() - started, 3),
    }
    heads.metadata.training = report
    return heads, report


def _train_group(
    members: list[HeadPlan],
    data: TrainingData,
    features: torch.Tensor,
    seed: int,
    hidden_dim: int,
    precision: Precision,
    bar: Any,
    label: str,
) -> tuple[dict[str, dict[str, Any]], UncertaintyHeads]:
    """Train heads sharing batch size, epochs, optimizer and schedule; ``members`` sorted by rows, largest first."""
    schedule = members[0].hyper
    batch_size, epochs = schedule.batch_size, schedule.epochs
    names = [plan.name for plan in members]
    module = UncertaintyHeads(
        HeadsMetadata(
            names=names,
            token_dim=data.token_dim,
            hidden_dim=hidden_dim,
            inputs=list(data.inputs),
            signal_normalization=data.signal_normalization,
        )
    )
    for plan in members:
        module.load_head_state_dict(plan.name, _initial_head_state(plan.name, data, hidden_dim, seed))
    module.to(features.device)
    workspace = GroupWorkspace(module, features, batch_size, members, precision)
    shufflers = [torch.Generator().manual_seed(derived_seed(seed, Stream.SHUFFLE, plan.name)) for plan in members]
    train_rows = [torch.from_numpy(plan.train_rows) for plan in members]
    train_targets = [torch.from_numpy(plan.train_targets) for plan in members]
    steps_per_head = [math.ceil(plan.train_rows.size / batch_size) for plan in members]
    num_steps = steps_per_head[0]
    # Number of heads that still have a batch in step s: a prefix, since members are sorted by row count.
    active_heads = [sum(steps > step for steps in steps_per_head) for step in range(num_steps)]
    has_validation = members[0].validation_rows.size > 0

    train_history: list[list[float | None]] = [[] for _ in members]
    validation_history: list[list[float | None]] = [[] for _ in members]
    best_loss = [math.inf] * len(members)
    best_epoch: list[int | None] = [None] * len(members)
    best_state: list[dict[str, torch.Tensor] | None] = [None] * len(members)
    diverged = [False] * len(members)
    # Early stopping: epochs since a head's last better validation loss; a stopped head's best is final.
    stale_epochs = [0] * len(members)
    stopped_epoch: list[int | None] = [None] * len(members)
    seconds_at_epoch: list[float] = []
    started = time.perf_counter()

    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            batches = epoch_batches(train_rows, train_targets, shufflers, batch_size, num_steps)
            row_index, targets, weights = (tensor.to(features.device) for tensor in batches)
            loss_sums = torch.zeros(len(members), dtype=loss_dtype(features.device), device=features.device)
            for step in range(num_steps):
                active = active_heads[step]
                # The schedule's factor at the end of this step, so that a warm-up's first step is not a zero step.
                scale = schedule.learning_rate_scale(epoch - 1 + (step + 1) / num_steps)
                losses = workspace.step(
                    active, row_index[step, :active], targets[step, :active], weights[step, :active], scale
                )
                loss_sums[:active] += losses
                bar.update(1)
                if step % 50 == 0 or step == num_steps - 1:
                    done_steps = torch.tensor([min(step + 1, s) for s in steps_per_head], device=features.device)
                    running = (loss_sums / done_steps).mean().item()
                    bar.set_postfix_str(f"{label} epoch {epoch}/{epochs} loss {running:.4f}".strip(), refresh=False)
            train_loss = (loss_sums.cpu().double() / torch.tensor(steps_per_head, dtype=torch.float64)).tolist()
            if has_validation:
                predictions = _predict(module, features, [plan.validation_rows for plan in members])
                losses_now = [
                    float(np.mean((prediction - plan.validation_targets.astype(np.float64)) ** 2))
                    for prediction, plan in zip(predictions, members, strict=True)
                ]
            else:
                losses_now = [float(loss) for loss in train_loss]
            for index, plan in enumerate(members):
                train_history[index].append(finite_or_none(train_loss[index]))
                if has_validation:
                    validation_history[index].append(finite_or_none(losses_now[index]))
                if not math.isfinite(train_loss[index]):
                    diverged[index] = True
                # Without validation the last finite epoch is kept, as the paper's code keeps the last one.
                improved = losses_now[index] < best_loss[index] if has_validation else not diverged[index]
                if stopped_epoch[index] is not None:
                    continue
                if math.isfinite(losses_now[index]) and improved and not diverged[index]:
                    best_loss[index] = losses_now[index]
                    best_epoch[index] = epoch
                    best_state[index] = module.head_state_dict(plan.name)
                    stale_epochs[index] = 0
                else:
                    stale_epochs[index] += 1
                if has_validation and plan.hyper.patience is not None and stale_epochs[index] >= plan.hyper.patience:
                    stopped_epoch[index] = epoch
            if features.device.type == "cuda":
                torch.cuda.synchronize(features.device)
            seconds_at_epoch.append(round(time.perf_counter() - started, 4))
            if has_validation:
                bar.set_postfix_str(
                    f"{label} epoch {epoch}/{epochs} loss {np.mean(train_loss):.4f} "
                    f"val {np.mean(losses_now):.4f}".strip()
                )
            if all(diverged[index] or stopped_epoch[index] is not None for index in range(len(members))):
                bar.update(num_steps * (epochs - epoch))
                break

    for index, plan in enumerate(members):
        if best_state[index] is not None:
            module.load_head_state_dict(plan.name, best_state[index])
    metrics: list[dict[str, float | None] | None] = [None] * len(members)
    if has_validation:
        predictions = _predict(module, features, [plan.validation_rows for plan in members])
        metrics = [
            regression_metrics(prediction, plan.validation_targets)
            for prediction, plan in zip(predictions, members, strict=True)
        ]
    results = {
        plan.name: {
            "hyper_parameters": plan.hyper.to_dict(),
            "best_epoch": best_epoch[index],
            "best_validation_mse": finite_or_none(best_loss[index]) if has_validation else None,
            "validation": metrics[index],
            "train_loss_per_epoch": train_history[index],
            "validation_mse_per_epoch": validation_history[index] if has_validation else None,
            "train_rows": int(plan.train_rows.size),
            "validation_rows": int(plan.validation_rows.size),
            "stopped_epoch": stopped_epoch[index],
            "seconds_at_epoch": seconds_at_epoch,
        }
        for index, plan in enumerate(members)
    }
    return results, module


def _group_key(hyper: HyperParameters) -> tuple[Any, ...]:
    """Heads train in one group when their steps and schedules coincide."""
    return (hyper.batch_size, hyper.epochs, str(hyper.optimizer), hyper.warmup_epochs, hyper.cosine)


def _optimizer_description(hypers: Sequence[HyperParameters]) -> str:
    """The report's words for how the heads were optimised."""
    words = []
    for hyper in hypers:
        if hyper.is_paper_recipe:
            line = "SGD with momentum and weight decay, rows reshuffled every epoch"
        else:
            schedule = [f"{hyper.warmup_epochs} warm-up epoch(s)"] if hyper.warmup_epochs else []
            schedule += ["cosine decay"] if hyper.cosine else []
            schedule += [f"early stopping (patience {hyper.patience})"] if hyper.patience is not None else []
            name = "AdamW (decoupled weight decay)" if hyper.optimizer == Optimizer.ADAMW else "SGD with momentum"
            line = ", ".join([name, *schedule, "rows reshuffled every epoch"])
        if line not in words:
            words.append(line)
    return "; ".join(words)


def _predict(module: UncertaintyHeads, features: torch.Tensor, rows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sigmoid outputs of each head of ``module`` on its own rows (float64)."""
    outputs = [np.empty(len(head_rows), dtype=np.float64) for head_rows in rows]
    longest = max(len(head_rows) for head_rows in rows)
    with torch.no_grad():
        for start in range(0, longest, _PREDICT_CHUNK_ROWS):
            stop = min(start + _PREDICT_CHUNK_ROWS, longest)
            index = torch.zeros(len(rows), stop - start, dtype=torch.int64)
            for head, head_rows in enumerate(rows):
                chunk = head_rows[start:stop]
                index[head, : len(chunk)] = torch.from_numpy(chunk)
            values = torch.sigmoid(module.logits(features[index.to(features.device)])).cpu().double().numpy()
            for head, head_rows in enumerate(rows):
                count = max(0, min(stop, len(head_rows)) - start)
                outputs[head][start : start + count] = values[head, :count]
    return outputs


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float | None]:
    """MSE, MAE, R² and Pearson correlation of predictions against targets (None where undefined).

    Args:
        predictions: ``(n,)`` predicted values.
        targets: ``(n,)`` true values.

    Returns:
        ``{"mse", "mae", "r2", "pearson", "num_rows"}``.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    errors = predictions - targets
    mse = float(np.mean(errors**2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    r2 = 1.0 - float(np.sum(errors**2)) / total if total > 0 else None
    # A diverged head predicts NaN: no correlation then (the metric functions refuse non-finite input).
    finite = bool(np.isfinite(predictions).all() and np.isfinite(targets).all())
    pearson = metrics.pearson(predictions, targets) if finite else None
    return {
        "mse": finite_or_none(mse),
        "mae": finite_or_none(float(np.mean(np.abs(errors)))),
        "r2": finite_or_none(r2),
        "pearson": finite_or_none(pearson),
        "num_rows": int(targets.size),
    }


def _initial_head_state(name: str, data: TrainingData, hidden_dim: int, seed: int) -> dict[str, torch.Tensor]:
    # Each head is initialised from its own stream, so its weights do not depend on the other heads trained.
    single = UncertaintyHeads(
        HeadsMetadata(
            names=[name],
            token_dim=data.token_dim,
            hidden_dim=hidden_dim,
            inputs=list(data.inputs),
            signal_normalization=data.signal_normalization,
        )
    )
    single.reset_parameters(torch.Generator().manual_seed(derived_seed(seed, Stream.INIT, name)))
    return single.head_state_dict(name)


def _features_tensor(features: np.ndarray) -> torch.Tensor:
    if features.dtype != np.float32:
        features = features.astype(np.float32)
    array = np.ascontiguousarray(features) if not isinstance(features, np.memmap) else features
    with warnings.catch_warnings():
        # A read-only array (e.g. a user's np.load(mmap_mode="r")) is shared as is: it is only ever read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def finite_or_none(value: float | None) -> float | None:
    """The value as a float, or None where it is missing or not finite (JSON has no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None
