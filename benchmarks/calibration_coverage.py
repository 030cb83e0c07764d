"""ECE before/after calibration and coverage of the IoU lower bounds on held-out rows of synthetic token stores.

Two stores (calibration and held-out, different seeds) of random-token rows whose true IoUs are a miscalibrated,
noisy function of what fixed random heads predict on those tokens (so the heads carry information, as trained ones
do, but their numbers are off). ``usam calibrate``'s code fits on the first store; ``usam evaluate``'s check measures
on the second. Usage: ``python benchmarks/calibration_coverage.py [--rows 3000] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from usam.evaluation import calibrate_heads_file, check_calibration
from usam.evaluation.rows import run_heads
from usam.heads import load_heads, random_heads
from usam.store import StoreWriter, row_schema

HEADS = ["iou_tiny", "iou_unsupervised", "iou_dense_prompt"]
TARGETS = {"iou_tiny": "iou", "iou_unsupervised": "unsupervised_iou", "iou_dense_prompt": "iou_dense_prompt"}


def write_store(root: Path, heads, rows: int, seed: int, scale: dict[str, tuple[float, float]]) -> None:
    """Rows of one model, two objects per image; each IoU = (standardised prediction)^1.5-shaped + noise."""
    rng = np.random.default_rng(seed)
    schema = row_schema()
    table = []
    for index in range(rows):
        row = {}
        for field in schema:
            if pa.types.is_fixed_size_list(field.type):
                row[field.name] = rng.standard_normal(field.type.list_size).astype(np.float32)
            elif pa.types.is_integer(field.type):
                row[field.name] = 64
            elif pa.types.is_floating(field.type):
                row[field.name] = float(rng.random())
        best = int(rng.integers(3))
        row["mask_ious"] = rng.uniform(0, 0.3, 3).astype(np.float32)
        row.update(image_key=f"i{index // 2:05d}", object_id=f"o{index % 2}", model="sam2.1-tiny", dataset="coco",
                   split="val", best=best)  # fmt: skip
        table.append(row)
    # The heads read the IoU token and the token of the best output (true pairing: token best + 1).
    features = np.stack(
        [np.concatenate([r["iou_token"], r["mask_tokens"].reshape(4, 256)[r["best"] + 1]]) for r in table]
    )
    predictions = run_heads(heads, features)
    for position, name in enumerate(HEADS):
        mean, spread = scale[name]
        z = (predictions[position] - mean) / spread
        values = np.clip((1 / (1 + np.exp(-1.5 * z))) ** 1.5 + rng.normal(0, 0.08, rows), 0, 1)
        for row, value in zip(table, values.tolist(), strict=True):
            row[TARGETS[name]] = value
    with StoreWriter(root, rows_per_part=500) as writer:
        for start in range(0, rows, 2):
            batch = table[start : start + 2]
            for row in batch:
                row["mask_ious"][row.pop("best")] = row["iou"]
            writer.add_image(batch[0]["image_key"], batch)


def main() -> None:
    """Write the stores, calibrate, check, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=3000, help="rows per store (default %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="usam-calibration-"))
    heads = random_heads(HEADS, seed=11)
    heads.save(folder / "heads.safetensors")
    pilot = run_heads(heads, np.random.default_rng(99).standard_normal((2000, 512)).astype(np.float32))
    scale = {name: (float(pilot[i].mean()), float(pilot[i].std())) for i, name in enumerate(HEADS)}
    start = time.perf_counter()
    write_store(folder / "calibration", heads, args.rows, 1, scale)
    write_store(folder / "held_out", heads, args.rows, 2, scale)
    written = time.perf_counter()
    path, _ = calibrate_heads_file(folder / "calibration", folder / "heads.safetensors", folder / "calibrated.st")
    fitted = time.perf_counter()
    check = check_calibration(folder / "held_out", load_heads(path))
    checked = time.perf_counter() - fitted
    print(f"stores {written - start:.1f} s, calibrate {fitted - written:.1f} s, check {checked:.1f} s")
    print("| head | held-out rows | ECE raw | ECE calibrated | coverage marginal / Mondrian, α = 0.05, 0.1, 0.2 |")
    for name, entry in check.heads.items():
        cells = ", ".join(
            f"{entry.coverage['marginal'][str(a)]:.3f} / {entry.coverage['mondrian'][str(a)]:.3f}" for a in check.alphas
        )
        print(f"| {name} | {entry.rows} | {entry.ece_before:.4f} | {entry.ece_after:.4f} | {cells} |")


if __name__ == "__main__":
    main()
