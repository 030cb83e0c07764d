"""The CUDA paths and the GPU figures of usam, in one run (for a machine with an NVIDIA GPU).

What it runs, each step timed and its output kept:

1. ``usam selfcheck --device cuda`` (random weights, 1024 px).
2. ``usam benchmark`` on random-weight sam2.1 tiny and large, both protocols (usam's and the paper's Table 7), in
   bfloat16 and in float32.
3. ``usam extract`` of the same small scene dataset (the test-bed's generator) with sam2.1 tiny and large
   (random weights saved as checkpoints), once with ``--precision float32`` (the paper's) and once with
   ``--precision bfloat16`` (usam's GPU default), with Monte Carlo; then how much the two stores differ.
4. ``benchmarks/train_speed.py --device cuda``: usam's trainer against the per-head DataLoader loop.

Usage::

    python benchmarks/device_check.py --out results/device [--scenes 24] [--skip-train]

Everything is written under ``--out``; ``summary.json`` holds the figures. Random weights prove code paths and
speed, never quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODELS = ("sam2.1-tiny", "sam2.1-large")


def run(command: list[str], log: Path, timeout: float) -> dict:
    """Run a command, keep its output in ``log``, return its status and seconds."""
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        status, output = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as error:
        status, output = "timeout", f"{error.stdout or ''}{error.stderr or ''}"
    seconds = time.perf_counter() - started
    log.write_text(f"$ {' '.join(command)}\n{output}\n[status {status}, {seconds:.1f} s]\n")
    print(f"[{status}] {seconds:7.1f} s  {' '.join(command)[:150]}", flush=True)
    return {"status": status, "seconds": round(seconds, 2), "tail": output.strip().splitlines()[-20:]}


def save_random_checkpoints(folder: Path, models: list[str]) -> None:
    """Random-weight SAM2 models saved under the official checkpoint names, as a user's download would be."""
    from usam import sam2_adapter
    from usam.models import get_model_spec

    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(models):
        spec = get_model_spec(name)
        path = folder / spec.checkpoint_name
        if not path.exists():
            model = sam2_adapter.build_sam2_model(spec, device="cpu", random_weights=True, seed=seed)
            torch.save({"model": model.state_dict()}, path)


def compare_stores(first: Path, second: Path) -> dict:
    """How far two stores of the same images, objects and models differ (tokens, IoUs, entropies)."""
    from usam.store import StoreReader

    readers = [StoreReader(first), StoreReader(second)]
    columns = ["image_key", "object_id", "model", "iou", "task_gap", "h_std", "h_all", "iou_token", "mask_ious"]
    tables = [reader.read(columns).sort_by([("image_key", "ascending"), ("object_id", "ascending"),
                                            ("model", "ascending")]) for reader in readers]  # fmt: skip
    if tables[0].num_rows != tables[1].num_rows:
        return {"rows": [tables[0].num_rows, tables[1].num_rows], "comparable": False}
    result: dict = {"rows": tables[0].num_rows, "comparable": True}
    for column in ("iou", "task_gap", "h_std", "h_all"):
        values = [np.asarray(table[column].to_numpy(zero_copy_only=False), dtype=np.float64) for table in tables]
        difference = np.abs(values[0] - values[1])
        result[column] = {
            "max_abs_difference": float(np.nanmax(difference)) if np.isfinite(difference).any() else None,
            "mean_abs_difference": float(np.nanmean(difference)) if np.isfinite(difference).any() else None,
        }
    tokens = [readers[index].tokens(tables[index], "iou_token", np.float64) for index in range(2)]
    scale = float(np.abs(tokens[0]).mean())
    result["iou_token_relative_mean_abs_difference"] = float(np.abs(tokens[0] - tokens[1]).mean() / scale)
    ious = [readers[index].tokens(tables[index], "mask_ious", np.float64) for index in range(2)]
    result["fraction_of_masks_whose_iou_moved_more_than_0.05"] = float((np.abs(ious[0] - ious[1]) > 0.05).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scenes", type=int, default=24, help="scenes extracted in each precision")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per benchmark variant")
    parser.add_argument(
        "--summary", type=Path, help="where summary.json goes (default: in --out); rewritten after each step"
    )
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    usam = [sys.executable, "-m", "usam"]
    summary: dict = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "steps": {},
    }
    steps = summary["steps"]
    print(json.dumps({key: summary[key] for key in ("torch", "device")}), flush=True)

    summary_path = args.summary or out / "summary.json"

    def save_summary() -> None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")

    steps["selfcheck"] = run(
        [*usam, "selfcheck", "--device", args.device, "--out", str(out / "selfcheck")], out / "selfcheck.log", 300
    )
    save_summary()

    from usam.testbed import write_scene_dataset

    data = write_scene_dataset(out / "scenes", args.scenes, seed=2025)
    checkpoints = out / "checkpoints"
    save_random_checkpoints(checkpoints, args.models)
    stores = {}
    for precision in ("float32", "bfloat16"):
        stores[precision] = out / f"store-{precision}"
        steps[f"extract_{precision}"] = run(
            [*usam, "extract", "--dataset", "folder", "--root", str(data), "--split", "all",
             "--models", *args.models, "--checkpoint-dir", str(checkpoints), "--device", args.device,
             "--precision", precision, "--out", str(stores[precision]), "--no-progress"],
            out / f"extract_{precision}.log",
            900,
        )  # fmt: skip
        save_summary()
    if all(steps[f"extract_{precision}"]["status"] == 0 for precision in stores):
        summary["extraction_float32_vs_bfloat16"] = compare_stores(stores["float32"], stores["bfloat16"])
        save_summary()

    def benchmark(model: str, precision: str) -> None:
        key = f"benchmark_{model}_{precision}"
        steps[key] = run(
            [*usam, "benchmark", "--random-weights", "--model", model, "--device", args.device,
             "--protocol", "both", "--precision", precision, "--iterations", str(args.iterations)],
            out / f"{key}.log",
            400,
        )  # fmt: skip
        save_summary()

    benchmark(args.models[0], "bfloat16")
    benchmark(args.models[0], "float32")
    if not args.skip_train:
        steps["train_speed"] = run(
            [sys.executable, str(Path(__file__).with_name("train_speed.py")), "--device", args.device,
             "--rows", str(args.train_rows)],
            out / "train_speed.log",
            600,
        )  # fmt: skip
        save_summary()
    for model in args.models[1:]:
        benchmark(model, "bfloat16")
        benchmark(model, "float32")
    for path in checkpoints.glob("*.pt"):
        os.unlink(path)  # hundreds of MB of random weights: nothing to keep
    save_summary()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
