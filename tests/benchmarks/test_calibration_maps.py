"""Tests for benchmarks/calibration_maps.py on small synthetic stores (the test-bed run itself is not repeated)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import IOU_STORE_HEADS, benchmark_module, write_iou_store
from usam.heads import random_heads


@pytest.fixture(scope="module")
def calibration_maps():
    with benchmark_module("calibration_maps") as module:
        yield module


def test_every_kind_is_fitted_checked_and_counted(calibration_maps, tmp_path):
    heads_file = tmp_path / "seed-0-tokens.safetensors"
    random_heads([*IOU_STORE_HEADS, "task_gap"], seed=5).save(heads_file)
    calibration, held_out = (
        write_iou_store(tmp_path / "calibration", seed=1),
        write_iou_store(tmp_path / "test", seed=2),
    )
    rows = calibration_maps.compare(calibration, held_out, [heads_file])
    assert set(rows) == {f"seed-0-tokens {name}" for name in IOU_STORE_HEADS}
    for row in rows.values():
        assert row["rows"] == 240
        assert row["before"] > 0.1  # random heads are far from IoUs around 0.8
        assert row["identity"] == pytest.approx(row["before"], abs=0.02)  # no correction (only clipped to [0, 1])
        for kind in ("affine", "isotonic", "auto"):
            assert row[kind] < row["before"] / 2
        assert row["auto chose"] in {"affine", "isotonic"}
        assert row["auto"] == row[row["auto chose"]]
    lines = calibration_maps.summary_lines("synthetic", rows)
    auto = next(line for line in lines if line.startswith("| auto |"))
    assert auto.split(" | ")[2:4] == ["3", "0"]  # lower for all three heads, higher for none


def test_noisy_copy_adds_noise_to_images_and_keeps_masks(calibration_maps, tmp_path):
    source = tmp_path / "scenes"
    (source / "images").mkdir(parents=True)
    for index in range(3):
        name = f"scene_{index:06d}"
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(source / "images" / f"{name}.png")
        (source / "masks" / name).mkdir(parents=True)
        Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(source / "masks" / name / "0.png")
    calibration_maps.noisy_copy(source, tmp_path / "copy", scenes=2, sigma=0.1, seed=0)
    copied = sorted(path.name for path in (tmp_path / "copy" / "images").iterdir())
    assert copied == ["scene_000000.png", "scene_000001.png"]
    pixels = np.asarray(Image.open(tmp_path / "copy" / "images" / copied[0]), dtype=np.float64) / 255
    assert 0.07 < pixels.std() < 0.13
    assert abs(pixels.mean() - 128 / 255) < 0.02
    mask = tmp_path / "copy" / "masks" / "scene_000000" / "0.png"
    assert (mask.read_bytes()) == (source / "masks" / "scene_000000" / "0.png").read_bytes()


def test_pairs_of_splits_fit_on_one_and_check_on_another_and_count_falls_rises_and_significant_ones(
    calibration_maps, tmp_path
):
    heads_files = []
    for seed in (0, 1):
        heads_files.append(tmp_path / f"seed-{seed}-tokens.safetensors")
        random_heads(list(IOU_STORE_HEADS), seed=5 + seed).save(heads_files[-1])
    stores = {
        split: write_iou_store(tmp_path / split, seed=seed)
        for split, seed in (("calibration", 1), ("test", 2), ("extra", 3))
    }
    results = calibration_maps.split_pairs(stores, heads_files)
    assert list(results) == ["calibration -> test", "extra -> test", "calibration -> extra", "test -> extra"]
    for rows in results.values():
        assert len(rows) == 2 * len(IOU_STORE_HEADS)
        for row in rows.values():
            low, high = row["change_interval"]
            assert row["after"] < row["before"] / 2  # random heads: any of these stores corrects them
            assert low <= high < 0  # far beyond the noise
            assert row["map"] in {"affine", "isotonic"}
    lines = calibration_maps.split_pair_lines(results, {"calibration": 10, "test": 20, "extra": 40})
    row = next(line for line in lines if line.startswith("| extra (40 scenes) → test (20 scenes)"))
    # Every head fell, none rose, per file (6) and as the mean of the two seeds (3); all six significantly.
    assert row.split(" | ")[2:5] == ["6 / 0 of 6", "6 / 0", "3 / 0 of 3 |"]
