"""Training speed: usam's trainer against a per-sample DataLoader loop that trains one head at a time.

Both train the nine heads on the same synthetic rows (512 inputs: an "IoU token" and a "mask token" of 256
values each; each head's target is a nonlinear function of them plus noise) with the same hyper-parameters,
the same by-image train/validation split and the same number of epochs. The batch is the paper's COCO batch
(189), weight decay 1e-3; lr 0.05 and momentum 0.9 (inside the paper's search space) rather than COCO's 0.0087
and 0.164, with which neither trainer moves off the targets' mean within two epochs on these unit-variance
tokens, which would make the loss comparison empty (``--lr``/``--momentum`` change them).

(a) ``usam.training.train_heads``: all nine heads in one vectorised model, rows in memory, per-epoch
    validation included in its time; once in float32 and once in mixed precision (``--precision bfloat16``:
    bfloat16 products, float32 weights and updates), each with its own ratio;
(b) the paper code's way: per head a ``torch.utils.data.Dataset`` whose ``__getitem__`` concatenates the two
    tokens of one row and clips its target, a shuffling ``DataLoader`` (batch 189), an ``nn.Sequential`` MLP and
    ``torch.optim.SGD``; validated once at the end (not timed).

Both run on ``--device`` (default: CUDA when available, else the CPU).

Run: ``.venv/bin/python benchmarks/train_speed.py [--rows 100000] [--epochs 2] [--device cuda]``

Time to quality (``--store STORE``, or ``--time-to-quality`` on the synthetic rows): on a token store's training
data (each head's own rows and targets, as ``usam train`` loads them) and one by-image validation split,

(c) the paper's recipe (its SGD values for the store's dataset, COCO's for others) in the per-sample DataLoader loop
    above, one head after another, validated after every epoch for up to ``--max-epochs`` epochs: its time is the
    sum over heads of the training time until the head's best validation loss (validation not timed);
(d) usam's default recipe (``usam.training.USAM_HYPER_PARAMETERS``: AdamW, batch 1024, warm-up and cosine, early
    stopping) in ``train_heads``: its time is the time until every head's validation loss is at most the paper
    recipe's best of that head (validation included).

The ratio (c) / (d) is printed; the target is 10x.

Run: ``.venv/bin/python benchmarks/train_speed.py --store STORE [--max-epochs 40] [--device cuda]``
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usam.devices import select_device
from usam.head_table import HEAD_NAMES
from usam.training import (
    USAM_HYPER_PARAMETERS,
    HyperParameters,
    TrainingData,
    defaults_for_datasets,
    load_training_data,
    paper_hyper_parameters,
    split_by_image,
    train_heads,
)

TOKEN = 256
ROWS_PER_IMAGE = 4
VALIDATION_FRACTION = 0.1


def synthetic_rows(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Features (rows, 512), image keys, and per head targets sigmoid(2 x.u + sin(2 x.v)) + noise (|u| = |v| = 1)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, 2 * TOKEN), dtype=np.float32)
    targets = {}
    for name in HEAD_NAMES:
        u, v = rng.standard_normal((2, 2 * TOKEN))
        u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
        logit = 2 * (features @ u) + np.sin(2 * (features @ v))
        targets[name] = np.clip(1 / (1 + np.exp(-logit)) + 0.01 * rng.standard_normal(rows), 0, 1)
    image_keys = np.arange(rows) // ROWS_PER_IMAGE
    return features, image_keys, targets


class TokenRows(Dataset):
    """One row per item, built per sample as the paper's ContainerDataset does."""

    def __init__(self, iou_tokens: torch.Tensor, mask_tokens: torch.Tensor, targets: np.ndarray) -> None:
        self.iou_tokens = iou_tokens
        self.mask_tokens = mask_tokens
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        return torch.cat([self.iou_tokens[index], self.mask_tokens[index]]), np.clip(self.targets[index], 0, 1)


def baseline(
    features: np.ndarray,
    train_rows: dict[str, np.ndarray],
    validation_rows: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    hyper: HyperParameters,
    device: torch.device,
) -> tuple[float, float]:
    """Train the heads one after another; returns (training seconds, mean validation MSE)."""
    seconds, errors = 0.0, []
    for index, name in enumerate(HEAD_NAMES):
        torch.manual_seed(index)
        rows = train_rows[name]
        tokens = torch.from_numpy(features[rows])
        dataset = TokenRows(
            tokens[:, :TOKEN].clone(), tokens[:, TOKEN:].clone(), targets[name][rows].astype(np.float32)
        )
        loader = DataLoader(dataset, batch_size=hyper.batch_size, shuffle=True)
        model = nn.Sequential(
            nn.Linear(2 * TOKEN, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1), nn.Sigmoid()
        ).to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay
        )
        loss_function = nn.MSELoss()
        started = time.perf_counter()
        for _ in range(hyper.epochs):
            for inputs, batch_targets in loader:
                optimizer.zero_grad()
                inputs, batch_targets = inputs.to(device).float(), batch_targets.to(device).float()
                loss = loss_function(model(inputs).squeeze(1), batch_targets)
                loss.backward()
                optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - started
        with torch.no_grad():
            held_out = validation_rows[name]
            predictions = model(torch.from_numpy(features[held_out]).to(device)).squeeze(1).double().cpu().numpy()
        errors.append(float(np.mean((predictions - targets[name][held_out]) ** 2)))
        print(f"  baseline {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return seconds, float(np.mean(errors))


def paper_time_to_best(
    data: TrainingData,
    is_validation_image: np.ndarray,
    hyper: dict[str, HyperParameters],
    max_epochs: int,
    device: torch.device,
) -> dict[str, tuple[float, float, int]]:
    """The paper's recipe in the per-sample DataLoader loop; per head (seconds to best epoch, best MSE, best epoch)."""
    token = data.features.shape[1] // 2
    results = {}
    for index, name in enumerate(data.head_names):
        torch.manual_seed(index)
        head = data.heads[name]
        held_out = is_validation_image[data.image_ids[head.rows]]
        rows, values = head.rows[~held_out], head.targets[~held_out].astype(np.float32)
        validation_inputs = torch.from_numpy(np.asarray(data.features[head.rows[held_out]], dtype=np.float32))
        validation_targets = head.targets[held_out].astype(np.float64)
        tokens = torch.from_numpy(np.asarray(data.features[rows], dtype=np.float32))
        dataset = TokenRows(tokens[:, :token].clone(), tokens[:, token:].clone(), values)
        loader = DataLoader(dataset, batch_size=hyper[name].batch_size, shuffle=True)
        model = nn.Sequential(
            nn.Linear(2 * token, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1), nn.Sigmoid()
        ).to(device)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=hyper[name].lr, momentum=hyper[name].momentum, weight_decay=hyper[name].weight_decay
        )
        loss_function = nn.MSELoss()
        seconds, best = 0.0, (math.inf, math.inf, 0)
        for epoch in range(1, max_epochs + 1):
            started = time.perf_counter()
            for inputs, batch_targets in loader:
                optimizer.zero_grad()
                inputs, batch_targets = inputs.to(device).float(), batch_targets.to(device).float()
                loss_function(model(inputs).squeeze(1), batch_targets).backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - started
            with torch.no_grad():
                predictions = model(validation_inputs.to(device)).squeeze(1).double().cpu().numpy()
            mse = float(np.mean((predictions - validation_targets) ** 2))
            if mse < best[1]:
                best = (seconds, mse, epoch)
        results[name] = best
        print(f"  paper recipe {name}: best MSE {best[1]:.6f} at epoch {best[2]} after {best[0]:.1f} s", flush=True)
    return results


def time_to_quality(data: TrainingData, dataset: str, max_epochs: int, device: torch.device, seed: int = 0) -> None:
    """Print the paper recipe's time to its best validation loss, usam's time to the same loss, and the ratio."""
    is_validation_image = split_by_image(data, VALIDATION_FRACTION, seed)
    paper = paper_time_to_best(
        data, is_validation_image, paper_hyper_parameters(dataset, data.head_names), max_epochs, device
    )
    _, report = train_heads(
        data,
        hyper_parameters=USAM_HYPER_PARAMETERS,
        seed=seed,
        validation_fraction=VALIDATION_FRACTION,
        progress=False,
        device=device,
    )
    reached_at = []
    for name in data.head_names:
        entry = report["heads"][name]
        epochs = [epoch for epoch, mse in enumerate(entry["validation_mse_per_epoch"], 1) if mse <= paper[name][1]]
        print(
            f"  usam recipe {name}: best MSE {entry['best_validation_mse']:.6f} at epoch {entry['best_epoch']} "
            f"(stopped {entry['stopped_epoch']}); reaches the paper's best at epoch {epochs[0] if epochs else None}"
        )
        reached_at.append(epochs[0] if epochs else None)
    paper_seconds = sum(seconds for seconds, _, _ in paper.values())
    print(f"paper recipe, per-sample DataLoader, {len(paper)} heads one by one: {paper_seconds:.1f} s to its best")
    if None in reached_at:
        print("usam recipe: did NOT reach the paper recipe's best loss for every head")
        return
    usam_seconds = report["heads"][data.head_names[0]]["seconds_at_epoch"][max(reached_at) - 1]
    print(
        f"usam recipe (AdamW, batch {USAM_HYPER_PARAMETERS.batch_size}, warm-up + cosine, early stopping): "
        f"{usam_seconds:.1f} s to the same loss (all heads, validation included) | "
        f"ratio {paper_seconds / usam_seconds:.1f} x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--device", help="torch device (default: CUDA when available, else the CPU)")
    parser.add_argument("--store", help="time to quality on this token store's training data")
    parser.add_argument("--time-to-quality", action="store_true", help="time to quality on the synthetic rows")
    parser.add_argument("--max-epochs", type=int, default=40, help="epochs the paper recipe runs at most (40)")
    parser.add_argument("--heads", nargs="+", help="heads to compare (default: all)")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.store:
        from usam.store import StoreReader

        data = load_training_data(StoreReader(args.store), args.heads)
        dataset = defaults_for_datasets(data.source.get("datasets", [])).dataset
        print(f"store {args.store}: {data.features.shape[0]} rows, heads {data.head_names}; paper values of {dataset}")
        time_to_quality(data, dataset, args.max_epochs, device)
        return
    if args.time_to_quality:
        features, image_keys, targets = synthetic_rows(args.rows)
        if args.heads:
            targets = {name: targets[name] for name in args.heads}
        print(f"synthetic: {args.rows} rows, heads {list(targets)}; COCO's paper values")
        time_to_quality(TrainingData.from_arrays(features, image_keys, targets), "coco", args.max_epochs, device)
        return

    print(
        f"{args.rows} rows x 512 inputs, 9 heads, {args.epochs} epoch(s); torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, device {device}"
    )
    features, image_keys, targets = synthetic_rows(args.rows)
    data = TrainingData.from_arrays(features, image_keys, targets)
    hyper = HyperParameters(lr=args.lr, epochs=args.epochs, batch_size=189, momentum=args.momentum)
    print(f"hyper-parameters {hyper.to_dict()}; load average {os.getloadavg()[0]:.2f} (other processes slow both)")

    usam_runs = {}
    for precision in ("float32", "bfloat16"):
        started = time.perf_counter()
        _, report = train_heads(
            data,
            hyper_parameters=hyper,
            seed=0,
            validation_fraction=VALIDATION_FRACTION,
            progress=False,
            device=device,
            precision=precision,
        )
        seconds = time.perf_counter() - started
        best = float(np.mean([report["heads"][name]["validation"]["mse"] for name in HEAD_NAMES]))
        last = float(np.mean([report["heads"][name]["validation_mse_per_epoch"][-1] for name in HEAD_NAMES]))
        usam_runs[precision] = (seconds / args.epochs, best, last)
        print(f"  usam {precision}: {seconds:.1f} s", flush=True)

    # The baseline gets the same by-image split.
    is_validation = split_by_image(data, VALIDATION_FRACTION, seed=0)
    held_out = is_validation[data.image_ids]
    train_rows = {name: np.flatnonzero(~held_out) for name in HEAD_NAMES}
    validation_rows = {name: np.flatnonzero(held_out) for name in HEAD_NAMES}
    baseline_seconds, baseline_mse = baseline(features, train_rows, validation_rows, targets, hyper, device)
    baseline_per_epoch = baseline_seconds / args.epochs

    print(f"per-head DataLoader baseline (float32): {baseline_per_epoch:.2f} s/epoch (validation not included)")
    for precision, (per_epoch, best, last) in usam_runs.items():
        verdict = "no worse" if best <= baseline_mse else "WORSE"
        print(
            f"usam trainer ({precision}): {per_epoch:.2f} s/epoch (9 heads, validation included) | "
            f"speed-up {baseline_per_epoch / per_epoch:.2f} x | validation MSE {best:.6f} (best epoch; last "
            f"{last:.6f}) vs baseline {baseline_mse:.6f}: {verdict}"
        )
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
