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
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from usam.devices import select_device
from usam.head_table import HEAD_NAMES
from usam.training import HyperParameters, TrainingData, split_by_image, train_heads

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--device", help="torch device (default: CUDA when available, else the CPU)")
    args = parser.parse_args()
    device = select_device(args.device)

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
