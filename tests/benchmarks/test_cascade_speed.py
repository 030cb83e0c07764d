"""Tests for benchmarks/cascade_speed.py's test-bed mode on small random-weight models and a two-scene dataset."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import benchmark_module, write_folder_dataset
from usam import sam2_adapter
from usam.datasets import open_dataset
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.uses import Escalation


@pytest.fixture(scope="module")
def cascade_speed():
    with benchmark_module("cascade_speed") as module:
        yield module


@pytest.fixture
def models(two_size_sam2):
    heads = random_heads(["iou_tiny", "iou_large", "model_gap"], seed=5, sam2_version="sam2.1")
    small = UncertainSAM(sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-tiny"]), heads)
    large = UncertainSAM(sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-large"]), heads)
    return small, large


@pytest.fixture
def scenes(cascade_speed, tmp_path):
    reader = open_dataset("folder", write_folder_dataset(tmp_path / "data", num_images=2), "all")
    return cascade_speed.scenes_of(reader)


def test_testbed_mode_spans_small_to_large(cascade_speed, models, scenes):
    rows = cascade_speed.run_testbed(*models, scenes, fractions=(0.0, 0.5, 1.0), resamples=50)
    by_name = {row["configuration"]: row for row in rows}
    small, large = by_name["small only"], by_name["large only"]
    assert small["objects"] == sum(len(scene.points) for scene in scenes) == 4
    assert small["escalated_fraction"] == 0.0
    assert large["escalated_fraction"] == 1.0
    assert small["seconds_ratio_to_small"] == 1.0
    assert large["seconds_per_object"] > 0
    for rule in ("model-gap", "iou"):
        cascade = sorted((row for row in rows if row["rule"] == rule), key=lambda row: row["target_fraction"])
        assert [row["target_fraction"] for row in cascade] == [0.0, 0.5, 1.0]
        assert [row["escalated_fraction"] for row in cascade] == [0.0, 0.5, 1.0]
        # model-gap escalates above τ (fewer as τ grows), iou below τ (more as τ grows).
        thresholds = [row["threshold"] for row in cascade]
        assert thresholds == sorted(thresholds, reverse=rule == "model-gap")
        assert cascade[0]["miou"]["value"] == pytest.approx(small["miou"]["value"])
        assert cascade[-1]["miou"]["value"] == pytest.approx(large["miou"]["value"])
        for row in cascade:
            assert row["miou"]["low"] <= row["miou"]["value"] <= row["miou"]["high"]
            assert row["miou"]["value"] <= row["oracle_miou_at_fraction"] + 1e-9
            assert row["miou"]["value"] <= row["miou_best_of_three"]["value"] + 1e-9
    oracle = by_name["oracle"]
    assert oracle["miou"]["value"] >= max(small["miou"]["value"], large["miou"]["value"]) - 1e-9


def test_explicit_thresholds_escalate_monotonically(cascade_speed, models, scenes):
    thresholds = [Escalation.parse(f"iou:{value}") for value in (0.0, 0.5, 1.0)]
    rows = cascade_speed.run_testbed(*models, scenes[:1], thresholds=thresholds, resamples=20)
    cascade = [row for row in rows if row["rule"] is not None]
    assert [row["threshold"] for row in cascade] == [0.0, 0.5, 1.0]
    shares = [row["escalated_fraction"] for row in cascade]
    assert shares == sorted(shares)
    assert shares[0] == 0.0
    assert all(row["rule"] == "iou" for row in cascade)
    assert [row["configuration"] for row in cascade] == ["cascade iou:0", "cascade iou:0.5", "cascade iou:1"]


def test_threshold_for_fraction_escalates_that_share(cascade_speed):
    estimates = np.array([0.3, 0.1, 0.2, 0.05, 0.4])
    for rule in ("model-gap", "iou"):
        for fraction, expected in ((0.0, 0), (0.4, 2), (1.0, 5)):
            escalation = cascade_speed.threshold_for_fraction(Escalation.parse(f"{rule}:0").rule, estimates, fraction)
            assert int(escalation.escalates(estimates).sum()) == expected
    gap = cascade_speed.threshold_for_fraction(Escalation.parse("model-gap:0").rule, estimates, 0.4)
    assert gap.escalates(estimates).tolist() == [True, False, False, False, True]
