"""Which calibration map helps trained heads: identity, affine, isotonic or the cross-validated choice, on the test-bed.

For every heads file ``usam testbed run`` trained (``DIR/heads/seed-<k>-<inputs>.safetensors``, uncalibrated), each
kind of map is fitted on the calibration split's store (``usam calibrate --map KIND``: the same code) and checked on
the test split's store (``usam evaluate``'s check): the expected calibration error of every IoU head before and after,
and the marginal bound's coverage at α = 0.1. The table counts, per kind, the heads whose ECE went down and up.

With ``--noise SIGMA`` the same is done on shifted data, the situation calibration is for: copies of the first
``--scenes`` calibration and test scenes with Gaussian pixel noise of that sigma added (the scenes' own noise is
0.01–0.06), extracted with the test-bed's models into ``DIR/shift-<SIGMA>/`` (reused when there).

With ``--extra-calibration N`` it asks whether more calibration data, or another sample of it, would let the default
(cross-validated) map lower every head's ECE: N fresh scenes of another seed are extracted like the calibration split
into ``DIR/calibration-extra-<N>/`` (reused when there), and the maps are fitted and checked on four pairs of splits:
the run's (calibration → test), N scenes → test, calibration → N scenes and test → N scenes. Per pair it counts the
heads whose ECE fell and rose (per heads file, and for the mean over the seeds as the results page shows it), and
those whose change has a 95 % bootstrap interval over the held-out images entirely below or above 0.

    python benchmarks/calibration_maps.py --testbed DIR [--noise 0.12 --scenes 400] [--extra-calibration 4000]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from usam.calibration import MapKind
from usam.evaluation import check_calibration, fit_calibration
from usam.heads import load_heads
from usam.testbed.pipeline import HEAD_VARIANTS, MODEL_KEYS, TestbedPaths, TestbedSettings, recorded_settings

KINDS = [MapKind.IDENTITY, MapKind.AFFINE, MapKind.ISOTONIC, MapKind.AUTO]


def noisy_copy(source: Path, target: Path, scenes: int, sigma: float, seed: int) -> None:
    """The first ``scenes`` scenes of a folder dataset with Gaussian noise added to the images (masks as they are)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (target / "images").mkdir(parents=True, exist_ok=True)
    for name in sorted(path.stem for path in (source / "images").glob("*.png"))[:scenes]:
        pixels = np.asarray(Image.open(source / "images" / f"{name}.png"), dtype=np.float32) / 255.0
        noisy = np.clip(pixels + sigma * rng.standard_normal(pixels.shape, dtype=np.float32), 0.0, 1.0)
        Image.fromarray((noisy * 255.0 + 0.5).astype(np.uint8)).save(target / "images" / f"{name}.png")
        shutil.copytree(source / "masks" / name, target / "masks" / name, dirs_exist_ok=True)


def shifted_stores(paths: TestbedPaths, sigma: float, scenes: int) -> dict[str, Path]:
    """Extract (or reuse) the noisy copies of the calibration and test scenes; their store paths by split."""
    from usam.datasets import open_dataset
    from usam.extraction import ExtractionOptions, build_models, run_extraction

    folder = paths.root / f"shift-{sigma:g}"
    stores = {split: folder / "stores" / split for split in ("calibration", "test")}
    if all((store / "_usam_store.json").exists() for store in stores.values()):
        return stores
    models = build_models([paths.card(key) for key in MODEL_KEYS])
    for split, seed in (("calibration", 1), ("test", 2)):
        scenes_folder = folder / "scenes" / split
        noisy_copy(paths.scenes(split), scenes_folder, scenes, sigma, seed)
        dataset = open_dataset("folder", scenes_folder, split)
        run_extraction(dataset, models, stores[split], options=ExtractionOptions(monte_carlo=False), progress=True)
    return stores


def extra_calibration_store(paths: TestbedPaths, settings: TestbedSettings, scenes: int) -> Path:
    """Extract (or reuse) ``scenes`` fresh calibration scenes of a seed that no split of the test-bed uses."""
    from usam.datasets import open_dataset
    from usam.extraction import ExtractionOptions, build_models, run_extraction
    from usam.testbed.scenes import write_scene_dataset

    folder = paths.root / f"calibration-extra-{scenes}"
    store = folder / "store"
    if (store / "_usam_store.json").exists() and (folder / "scenes" / "labels.json").exists():
        return store
    seed = max(split_seed for _, _, split_seed in settings.splits()) + 1
    write_scene_dataset(folder / "scenes", scenes, seed, settings.image_size, progress=True)
    models = build_models([paths.card(key) for key in MODEL_KEYS])
    dataset = open_dataset("folder", folder / "scenes", "calibration")
    run_extraction(dataset, models, store, options=ExtractionOptions(monte_carlo=False), progress=True)
    return store


def split_pairs(stores: dict[str, Path], heads_files: list[Path]) -> dict:
    """Per pair of splits (fitted on → checked on), per heads file and IoU head: ECE before, after, change interval."""
    pairs = [("calibration", "test"), ("extra", "test"), ("calibration", "extra"), ("test", "extra")]
    results = {}
    for fitted_on, checked_on in pairs:
        rows = {}
        for heads_file in heads_files:
            calibrated = load_heads(heads_file)
            calibration = fit_calibration(stores[fitted_on], calibrated)
            calibrated.metadata.calibration = calibration.to_json()
            for name, entry in check_calibration(stores[checked_on], calibrated).heads.items():
                rows[f"{heads_file.stem} {name}"] = {
                    "before": entry.ece_before,
                    "after": entry.ece_after,
                    "change_interval": entry.ece_change_interval,
                    "map": str(calibration.heads[name].map_kind),
                }
        results[f"{fitted_on} -> {checked_on}"] = rows
    return results


def split_pair_lines(results: dict, sizes: dict[str, int]) -> list[str]:
    """One table row per pair of splits: falls and rises per heads file, of the seeds' means, and significant ones."""
    lines = [
        "### Which calibration data: the default map fitted on one split, checked on another",
        "",
        "| fitted on → checked on | mean ECE before → after | per heads file: fell / rose | interval below 0 / above 0 "
        "| mean over seeds: fell / rose |",
        "|---|---|---|---|---|",
    ]
    for pair, rows in results.items():
        before = np.array([row["before"] for row in rows.values()])
        after = np.array([row["after"] for row in rows.values()])
        below = sum(row["change_interval"][1] < 0 for row in rows.values())
        above = sum(row["change_interval"][0] > 0 for row in rows.values())
        per_head: dict[str, list[tuple[float, float]]] = {}
        for key, row in rows.items():
            stem, name = key.split(" ")
            variant = stem.split("-", 2)[2]  # seed-<k>-<inputs>
            per_head.setdefault(f"{variant} {name}", []).append((row["before"], row["after"]))
        means = [(np.mean([b for b, _ in pairs]), np.mean([a for _, a in pairs])) for pairs in per_head.values()]
        fitted_on, checked_on = pair.split(" -> ")
        label = f"{fitted_on} ({sizes[fitted_on]} scenes) → {checked_on} ({sizes[checked_on]} scenes)"
        lines.append(
            f"| {label} | {before.mean():.4f} → {after.mean():.4f} | {int(np.sum(after < before))} / "
            f"{int(np.sum(after > before))} of {len(rows)} | {below} / {above} | "
            f"{sum(a < b for b, a in means)} / {sum(a > b for b, a in means)} of {len(means)} |"
        )
    return [*lines, ""]


def compare(calibration_store: Path, test_store: Path, heads_files: list[Path]) -> dict:
    """Per heads file, IoU head and kind of map: ECE before and after and coverage at α = 0.1."""
    rows = {}
    for heads_file in heads_files:
        heads = load_heads(heads_file)
        for kind in KINDS:
            calibration = fit_calibration(calibration_store, heads, map_kind=kind)
            calibrated = load_heads(heads_file)
            calibrated.metadata.calibration = calibration.to_json()
            check = check_calibration(test_store, calibrated)
            for name, entry in check.heads.items():
                row = rows.setdefault(f"{heads_file.stem} {name}", {"rows": entry.rows, "before": entry.ece_before})
                row[str(kind)] = entry.ece_after
                row[f"{kind} coverage 0.1"] = entry.coverage["marginal"]["0.1"]
                if kind is MapKind.AUTO:
                    row["auto chose"] = str(calibration.heads[name].map_kind)
    return rows


def summary_lines(title: str, rows: dict) -> list[str]:
    before = np.array([row["before"] for row in rows.values()])
    lines = [f"### {title} ({len(rows)} IoU heads)", ""]
    lines += ["| map | mean ECE | ECE lower than before | higher | mean coverage at α = 0.1 |", "|---|---|---|---|---|"]
    lines.append(f"| none | {before.mean():.4f} | | | |")
    for kind in KINDS:
        after = np.array([row[str(kind)] for row in rows.values()])
        coverage = np.mean([row[f"{kind} coverage 0.1"] for row in rows.values()])
        lines.append(f"| {kind} | {after.mean():.4f} | {int(np.sum(after < before))} | {int(np.sum(after > before))} "
                     f"| {coverage:.3f} |")  # fmt: skip
    chosen = [row["auto chose"] for row in rows.values()]
    lines += ["", "auto chose: " + ", ".join(f"{kind} {chosen.count(str(kind))}" for kind in KINDS[:3]), ""]
    return lines


def main() -> None:
    """Compare the kinds of map on the test-bed's splits and, with ``--noise``, on shifted copies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--testbed", type=Path, required=True, help="a folder after `usam testbed run`")
    parser.add_argument("--noise", type=float, default=None, help="also on copies with this pixel noise sigma")
    parser.add_argument("--scenes", type=int, default=400, help="scenes per shifted split (default %(default)s)")
    parser.add_argument("--extra-calibration", type=int, default=None, metavar="N",
                        help="also fit and check on pairs of splits with N fresh calibration scenes")  # fmt: skip
    parser.add_argument("--out", type=Path, help="write every row as JSON")
    args = parser.parse_args()
    paths = TestbedPaths(args.testbed)
    heads_files = sorted(
        path for path in paths.root.glob("heads/seed-*.safetensors") if not path.stem.endswith("-calibrated")
    )
    if not heads_files:
        raise SystemExit(f"no heads files in {paths.root / 'heads'}; run `usam testbed run --out {args.testbed}`")
    print(f"heads files: {len(heads_files)} ({', '.join(HEAD_VARIANTS)} variants)")
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows with non-finite tokens are the evaluation's to report
        started = time.perf_counter()
        results["test-bed splits"] = compare(paths.store("calibration"), paths.store("test"), heads_files)
        print(f"in distribution: {time.perf_counter() - started:.0f} s")
        if args.noise is not None:
            started = time.perf_counter()
            stores = shifted_stores(paths, args.noise, args.scenes)
            results[f"pixel noise sigma {args.noise:g}"] = compare(stores["calibration"], stores["test"], heads_files)
            print(f"shifted (extraction included): {time.perf_counter() - started:.0f} s")
        pairs, settings = None, recorded_settings(paths) or TestbedSettings()
        if args.extra_calibration is not None:
            started = time.perf_counter()
            stores = {split: paths.store(split) for split in ("calibration", "test")}
            stores["extra"] = extra_calibration_store(paths, settings, args.extra_calibration)
            pairs = split_pairs(stores, heads_files)
            print(f"pairs of splits (extraction included): {time.perf_counter() - started:.0f} s")
    lines = []
    for title, rows in results.items():
        lines += summary_lines(title, rows)
    if pairs is not None:
        sizes = {"calibration": settings.calibration_scenes, "test": settings.test_scenes,
                 "extra": args.extra_calibration}  # fmt: skip
        lines += split_pair_lines(pairs, sizes)
        results["pairs of splits"] = pairs
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
