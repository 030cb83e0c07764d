"""``usam calibrate`` and the calibration part of ``usam evaluate`` on small synthetic token stores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from conftest import IOU_STORE_HEADS, run_cli, write_iou_store
from usam.evaluation import check_calibration, fit_calibration, run_evaluation
from usam.heads import load_heads, random_heads

IOU_HEADS = IOU_STORE_HEADS


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    random_heads([*IOU_HEADS, "task_gap"], seed=5).save(folder / "heads.safetensors")
    return {
        "folder": folder,
        "calibration": write_iou_store(folder / "calibration", seed=1),
        "held_out": write_iou_store(folder / "held_out", seed=2),
        "heads": folder / "heads.safetensors",
    }


def test_calibrate_writes_a_calibrated_copy_that_lowers_the_ece_on_held_out_rows(stores, tmp_path, capsys):
    out = tmp_path / "calibrated.safetensors"
    argv = ["calibrate", "--data", stores["calibration"], "--heads", stores["heads"], "--out", out]
    # Isotonic maps: the random heads' outputs spread the rows over several Mondrian bins.
    status, stdout, stderr = run_cli([*argv, "--min-bin-rows", "40", "--map", "isotonic"], capsys)
    assert status == 0, stderr
    assert f"wrote {out}" in stdout
    assert "iou_dense_prompt: isotonic map fitted on 240 rows" in stdout
    original, calibrated = load_heads(stores["heads"]), load_heads(out)
    assert set(calibrated.calibration.heads) == set(IOU_HEADS)
    assert calibrated.calibration.source["store"] == str(stores["calibration"])
    for name in original.names:
        for key, tensor in original.head_state_dict(name).items():
            assert torch.equal(calibrated.head_state_dict(name)[key], tensor)
    rows = calibrated.calibration.source["rows"]["iou_tiny"]
    assert rows["fit"] + rows["conformal"] == 240
    assert min(rows.values()) > 80
    assert len(calibrated.calibration.heads["iou_tiny"].bins) > 1  # Mondrian bins of >= 40 rows

    check = check_calibration(stores["held_out"], calibrated)
    assert check.calibrated
    assert set(check.heads) == set(IOU_HEADS)
    for name, entry in check.heads.items():
        assert entry.rows == 240
        assert entry.ece_before > 0.1, name  # random heads are far from IoUs around 0.8
        assert entry.ece_after < entry.ece_before / 2, name
        # A large fall: its whole bootstrap interval is below 0, and the JSON carries the interval, not the samples.
        low, high = entry.ece_change_interval
        assert low <= entry.ece_after - entry.ece_before <= high < 0, name
        assert entry.ece_change_samples.shape == (check.ece_resamples,)
        assert entry.to_json()["ece_change_interval"] == [low, high]
        assert "ece_change_samples" not in entry.to_json()
        for bound in ("marginal", "mondrian"):
            assert set(entry.coverage[bound]) == {"0.05", "0.1", "0.2"}
            for value in entry.coverage[bound].values():
                assert 0.6 <= value <= 1.0  # 240 held-out rows: a loose check; tests/test_calibration.py is exact

    # The same calibration from Python, with the same seed, is the same.
    again = fit_calibration(stores["calibration"], original, min_bin_rows=40, map_kind="isotonic")
    assert again.to_json() == calibrated.metadata.calibration


def test_calibrate_chooses_each_heads_map_by_cross_validation_over_images(stores, tmp_path, capsys):
    out = tmp_path / "auto.safetensors"
    argv = ["calibrate", "--data", stores["calibration"], "--heads", stores["heads"], "--out", out, "--folds", "4"]
    status, stdout, stderr = run_cli(argv, capsys)
    assert status == 0, stderr
    calibrated = load_heads(out)
    assert calibrated.calibration.source["map"] == "auto"
    assert calibrated.calibration.source["map_folds"] == 4
    for name in IOU_HEADS:
        chosen = re.search(rf"{name}: (\w+) map \(out-of-fold squared error: identity ([0-9.]+), affine "
                           r"([0-9.]+), isotonic ([0-9.]+)\) fitted on 240 rows", stdout)  # fmt: skip
        assert chosen is not None, stdout
        errors = dict(zip(("identity", "affine", "isotonic"), map(float, chosen.groups()[1:]), strict=True))
        assert chosen.group(1) == min(errors, key=errors.get)  # the kind with the least out-of-fold error
        assert chosen.group(1) != "identity"  # random heads are far off: a correction predicts unseen images better
        head = calibrated.calibration.heads[name]
        assert str(head.map_kind) == chosen.group(1)
        assert head.map_errors == pytest.approx(errors, abs=5e-6)
    check = check_calibration(stores["held_out"], calibrated)
    for name, entry in check.heads.items():
        assert entry.ece_after < entry.ece_before / 2, name


def test_evaluate_reports_ece_coverage_and_a_reliability_diagram(stores, tmp_path):
    heads = tmp_path / "calibrated.safetensors"
    calibration = fit_calibration(stores["calibration"], load_heads(stores["heads"]))
    plain = load_heads(stores["heads"])
    plain.metadata.calibration = calibration.to_json()
    plain.save(heads)
    # On its own calibration store (flagged: the held-out check is the test above), to keep to two evaluations.
    result = run_evaluation(stores["calibration"], heads, tmp_path / "report", ablation=False, seeds=1, progress=False)
    assert any("calibrated on this store" in note for note in result.warnings)
    stored = json.loads((tmp_path / "report" / "results.json").read_text())
    assert stored["calibration"]["calibrated"] is True
    assert stored["calibration"]["calibration_store"] == str(stores["calibration"])
    assert "reliability.png" in stored["files"]
    assert (tmp_path / "report" / "reliability.png").is_file()
    entry = stored["calibration"]["heads"]["iou_tiny"]
    assert entry["ece_after"] < entry["ece_before"]
    assert entry["coverage"]["mondrian"]["0.1"] == result.calibration.heads["iou_tiny"].coverage["mondrian"]["0.1"]
    assert len(entry["reliability_after"]["predicted"]) == 15
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Calibration of the IoU heads" in report
    assert "(reliability.png)" in report
    assert "Coverage α = 0.1 (target 90%)" in report
    low, high = entry["ece_change_interval"]
    change = entry["ece_after"] - entry["ece_before"]
    assert f"{change:+.4f} [{low:+.4f}, {high:+.4f}]" in report  # the ECE's change with its interval

    # Uncalibrated heads: the raw ECE only, no diagram; the earlier run's diagram is removed.
    again = run_evaluation(stores["held_out"], stores["heads"], tmp_path / "report", ablation=False, seeds=1,
                           progress=False)  # fmt: skip
    assert not any("calibrated on this store" in note for note in again.warnings)
    stored = json.loads((tmp_path / "report" / "results.json").read_text())
    assert stored["calibration"]["calibrated"] is False
    assert stored["calibration"]["heads"]["iou_tiny"]["ece_after"] is None
    assert stored["calibration"]["heads"]["iou_tiny"]["ece_before"] > 0.1
    assert not (tmp_path / "report" / "reliability.png").exists()
    assert "raw ECE only" in (tmp_path / "report" / "report.md").read_text()


def test_calibrate_errors_are_one_line(stores, tmp_path, capsys):
    gap_only = tmp_path / "gap.safetensors"
    random_heads(["task_gap"], seed=1).save(gap_only)
    with_large = tmp_path / "large.safetensors"
    random_heads(["iou_tiny", "iou_large"], seed=1).save(with_large)
    out = tmp_path / "out.safetensors"
    cases = [
        (["--heads", gap_only], "no IoU head"),
        (["--heads", with_large], "iou_large"),  # the store has no large model: no target for that head
        (["--heads", with_large, "--only", "task_gap"], "not an IoU head"),
        (["--heads", stores["heads"], "--fit-fraction", "1.5"], "fit_fraction"),
        (["--heads", stores["heads"], "--out", stores["heads"]], "input"),
    ]
    for extra, expected in cases:
        argv = ["calibrate", "--data", stores["calibration"], "--out", out, *extra]
        status, _, stderr = run_cli(argv, capsys)
        assert status == 2, (extra, stderr)
        assert stderr.startswith("usam: error: "), stderr
        assert stderr.count("\n") == 1, stderr
        assert expected in stderr, stderr
        assert not out.exists()
    # --only calibrates the heads that have rows.
    status, _, stderr = run_cli(
        ["calibrate", "--data", stores["calibration"], "--heads", with_large, "--out", out, "--only", "iou_tiny"],
        capsys,
    )
    assert status == 0, stderr
    assert set(load_heads(out).calibration.heads) == {"iou_tiny"}


def test_predict_refuses_an_alpha_outside_0_1_before_loading_a_model(stores, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "image.png")
    for alpha in ("0", "1", "1.5", "-0.1"):
        argv = ["predict", tmp_path / "image.png", "--heads", stores["heads"], "--point", "1,1",
                "--out", tmp_path / "out", "--alpha", alpha, "--checkpoint", tmp_path / "missing.pt"]  # fmt: skip
        status, _, stderr = run_cli(argv, capsys)
        assert status == 2, stderr
        assert stderr.count("\n") == 1, stderr
        assert "alpha" in stderr, stderr
