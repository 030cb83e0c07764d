"""Calibrated heads: the calibration round-trips through the heads file; the predictor and its JSON report it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usam.calibration import HeadCalibration, HeadsCalibration
from usam.errors import HeadsFileError, InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.heads import load_heads, random_heads
from usam.outputs import prediction_record
from usam.predictor import UncertainSAM

CALIBRATED = ("iou_tiny", "iou_unsupervised")


def calibrated_heads(seed=0):
    """Random heads whose two IoU heads carry a calibration fitted on synthetic rows."""
    rng = np.random.default_rng(seed)
    heads = random_heads(HEAD_NAMES, seed=seed)
    per_head = {}
    for name in CALIBRATED:
        predictions = rng.uniform(0.3, 0.7, 600)
        targets = np.clip(2 * (predictions - 0.3) + rng.normal(0, 0.1, 600), 0, 1)
        per_head[name] = HeadCalibration.fit(predictions[:300], targets[:300], predictions[300:], targets[300:],
                                             min_bin_rows=60)  # fmt: skip
    heads.metadata.calibration = HeadsCalibration(per_head, source={"store": "synthetic"}).to_json()
    return heads


def test_calibration_round_trips_through_the_heads_file_and_weights_are_untouched(tmp_path):
    heads = calibrated_heads()
    heads.save(tmp_path / "heads.safetensors")
    loaded = load_heads(tmp_path / "heads.safetensors")
    assert loaded.metadata.calibration == heads.metadata.calibration
    for name in HEAD_NAMES:
        for key, tensor in heads.head_state_dict(name).items():
            assert torch.equal(loaded.head_state_dict(name)[key], tensor), (name, key)
    values = {name: np.random.default_rng(1).uniform(size=(2, 3)) for name in HEAD_NAMES}
    original, again = heads.calibration.apply(values, 0.1), loaded.calibration.apply(values, 0.1)
    assert set(original[0]) == set(CALIBRATED)
    for before, after in zip(original, again, strict=True):
        for name in CALIBRATED:
            np.testing.assert_array_equal(before[name], after[name])
    # A subset keeps the calibration of the heads it keeps, and none when it keeps no calibrated head.
    assert set(loaded.select(["iou_tiny", "model_gap"]).calibration.heads) == {"iou_tiny"}
    assert loaded.select(["model_gap"]).calibration is None


def test_files_without_calibration_load_unchanged(tmp_path):
    heads = random_heads(["iou_tiny", "task_gap"], seed=2)
    heads.save(tmp_path / "plain.safetensors")
    loaded = load_heads(tmp_path / "plain.safetensors")
    assert loaded.calibration is None
    assert loaded.metadata.calibration is None


def test_malformed_or_gap_head_calibration_is_refused_on_load(tmp_path):
    heads = calibrated_heads()
    entry = heads.metadata.calibration["heads"]["iou_tiny"]
    heads.metadata.calibration["heads"]["task_gap"] = entry
    heads.save(tmp_path / "gap.safetensors")
    with pytest.raises(HeadsFileError, match="not IoU heads"):
        load_heads(tmp_path / "gap.safetensors")
    heads = calibrated_heads()
    heads.metadata.calibration["heads"]["iou_tiny"]["mondrian"]["edges"].append(2.0)
    heads.save(tmp_path / "bins.safetensors")
    with pytest.raises(HeadsFileError, match="bins"):
        load_heads(tmp_path / "bins.safetensors")


def test_predictor_reports_calibrated_iou_and_lower_bound(predictor, rgb_image):
    heads = calibrated_heads()
    model = UncertainSAM(predictor, heads, alpha=0.2)
    model.set_image(rgb_image)
    prompt = {"point_coords": np.array([[[30.0, 40.0]], [[60.0, 50.0]]]), "point_labels": np.array([[1], [1]])}
    result = model.predict(**prompt)
    assert set(result.calibrated_iou) == set(result.iou_lower) == set(CALIBRATED)
    assert result.alpha == 0.2
    assert result.bound == "mondrian"
    calibration = heads.calibration
    for name in CALIBRATED:
        expected = calibration.heads[name].calibrate(result.uncertainty[name])
        np.testing.assert_array_equal(result.calibrated_iou[name], expected)
        assert result.iou_lower[name].shape == result.sam_scores.shape
        np.testing.assert_array_equal(
            result.iou_lower[name], calibration.heads[name].lower_bound(result.uncertainty[name], 0.2, "mondrian")
        )
    # A smaller alpha gives a bound that is lower or equal everywhere; the raw estimates do not change.
    model.alpha = 0.05
    strict = model.predict(**prompt)
    for name in CALIBRATED:
        assert (strict.iou_lower[name] <= result.iou_lower[name]).all()
        np.testing.assert_array_equal(strict.uncertainty[name], result.uncertainty[name])
    for bad in (0.0, 1.5, 0.0001):
        with pytest.raises(InvalidInputError, match="alpha"):
            model.alpha = bad

    record = prediction_record(result, [{"points": 1}, {"points": 1}])
    assert record["calibration"]["alpha"] == 0.2
    assert "marginal" in record["calibration"]["guarantee"]
    mask = record["objects"][1]["masks"][2]
    assert set(mask["calibrated_iou"]) == set(mask["iou_lower"]) == set(CALIBRATED)
    assert mask["iou_lower"]["iou_tiny"] == pytest.approx(float(result.iou_lower["iou_tiny"][1, 2]))
    json.dumps(record, allow_nan=False)


def test_uncalibrated_heads_report_nothing_more(predictor, rgb_image):
    model = UncertainSAM(predictor, random_heads(seed=3))
    model.set_image(rgb_image)
    result = model.predict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    assert result.calibrated_iou == {}
    assert result.iou_lower == {}
    assert result.alpha is None
    record = prediction_record(result, [{"points": 1}])
    assert "calibration" not in record
    assert "iou_lower" not in record["objects"][0]["masks"][0]
