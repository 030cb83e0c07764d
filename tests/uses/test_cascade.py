"""Tests for usam.uses.cascade on small random-weight SAM2 models."""

from __future__ import annotations

import numpy as np
import pytest

from usam import sam2_adapter
from usam.errors import HeadsFileError, InvalidInputError
from usam.heads import random_heads
from usam.predictor import UncertainSAM
from usam.uses import CascadeSAM, Escalation, EscalationRule, pick_by_predicted_iou

BOXES = np.array([[10, 10, 60, 50], [40, 30, 110, 90], [0, 0, 119, 95], [70, 5, 115, 40], [20, 50, 50, 90]], np.float32)


class CountingSAM(UncertainSAM):
    """An UncertainSAM that counts its image encodings (a spy on the wrapper; the model is untouched)."""

    set_image_calls = 0

    def set_image(self, image):
        self.set_image_calls += 1
        super().set_image(image)


@pytest.fixture
def models(two_size_sam2):
    tiny = UncertainSAM(
        sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-tiny"]),
        random_heads(["iou_tiny", "model_gap", "task_gap"], seed=3, sam2_version="sam2.1"),
    )
    large = CountingSAM(
        sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-large"]),
        random_heads(["iou_large"], seed=4, sam2_version="sam2.1"),
    )
    return tiny, large


def small_estimates(tiny, image, head):
    tiny.set_image(image)
    alone = tiny.predict(box=BOXES)
    picked = pick_by_predicted_iou(alone.uncertainty["iou_tiny"])
    return alone, np.take_along_axis(alone.uncertainty[head], picked[:, None], axis=1)[:, 0]


@pytest.mark.parametrize(("rule", "head"), [("model-gap", "model_gap"), ("iou", "iou_tiny")])
def test_cascade_escalates_exactly_the_objects_past_the_threshold(models, rgb_image, rule, head):
    tiny, large = models
    alone, estimates = small_estimates(tiny, rgb_image, head)
    threshold = float(np.median(estimates))
    expected = estimates > threshold if rule == "model-gap" else estimates < threshold
    assert 0 < expected.sum() < len(BOXES)

    cascade = CascadeSAM(tiny, large, f"{rule}:{threshold}")
    cascade.set_image(rgb_image)
    result = cascade.predict(box=BOXES)

    np.testing.assert_array_equal(result.escalated, expected)
    np.testing.assert_allclose(result.estimate, estimates)
    assert result.answered_by == ["large" if flag else "small" for flag in expected]
    assert result.escalated_fraction == pytest.approx(expected.mean())
    # Each answer is what the answering model gives alone.
    large.set_image(rgb_image)
    large_alone = large.predict(box=BOXES)
    for index in range(len(BOXES)):
        reference = large_alone if expected[index] else alone
        answer = result.answer(index)
        # Batches of other sizes differ by float rounding only: a pixel on a logit of ~0 may flip.
        assert np.mean(answer.masks != reference.masks[index]) < 1e-3
        np.testing.assert_allclose(answer.sam_scores, reference.sam_scores[index], atol=1e-4)
        assert result.masks[index].shape == reference.masks[index].shape
    assert result.large.sam_scores.shape[0] == expected.sum()


@pytest.mark.parametrize(("rule", "head"), [("model-gap", "model_gap"), ("iou", "iou_tiny")])
def test_decision_estimate_of_a_prediction_is_what_predict_decides_on(models, rgb_image, rule, head):
    tiny, large = models
    alone, estimates = small_estimates(tiny, rgb_image, head)
    cascade = CascadeSAM(tiny, large, f"{rule}:0.0")
    decision_mask, estimate = cascade.decision_estimate(alone)
    np.testing.assert_array_equal(decision_mask, pick_by_predicted_iou(alone.uncertainty["iou_tiny"]))
    np.testing.assert_allclose(estimate, estimates)
    single = tiny.predict(point_coords=[[50, 40]], point_labels=[1])
    single_mask, single_estimate = cascade.decision_estimate(single)
    assert single_mask.shape == single_estimate.shape == (1,)
    assert single_estimate[0] == pytest.approx(single.uncertainty[head][single_mask[0]])


def test_large_model_encodes_lazily_and_once_per_image(models, rgb_image):
    tiny, large = models
    never = CascadeSAM(tiny, large, Escalation(EscalationRule.MODEL_GAP, 0.5))
    never.set_image(rgb_image)
    result = never.predict(box=BOXES)
    assert not result.escalated.any()
    assert result.large is None
    assert large.set_image_calls == 0
    np.testing.assert_array_equal(result.masks, result.small.masks)

    always = CascadeSAM(tiny, large, "iou:1.0")
    always.set_image(rgb_image)
    always.predict(box=BOXES)
    always.predict(point_coords=[[50, 40]], point_labels=[1])
    assert large.set_image_calls == 1
    always.set_image(rgb_image[::-1].copy())
    single = always.predict(point_coords=[[50, 40]], point_labels=[1])
    assert large.set_image_calls == 2
    assert single.escalated.tolist() == [True]
    assert single.masks.shape == single.large.masks.shape


def test_cascade_names_the_heads_it_needs(two_size_sam2):
    large = UncertainSAM(sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-large"]))
    without_gap = UncertainSAM(
        sam2_adapter.make_image_predictor(two_size_sam2["sam2.1-tiny"]), random_heads(["iou_large", "task_gap"])
    )
    with pytest.raises(HeadsFileError, match="needs the head\\(s\\) model_gap"):
        CascadeSAM(without_gap, large, "model-gap:0.05")
    with pytest.raises(HeadsFileError, match="iou_tiny"):
        CascadeSAM(without_gap, large, "iou:0.7")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("model-gap", "RULE|model-gap:THRESHOLD"),
        ("gap:0.1", "escalation rule must be one of"),
        ("iou:high", "must be a number"),
        ("iou:1.5", "at most 1"),
        ("model-gap:-0.9", "at least -0.5"),
        ("iou:nan", "finite"),
    ],
)
def test_bad_escalation_specs_are_one_line_errors(spec, message):
    with pytest.raises(InvalidInputError, match=message) as error:
        Escalation.parse(spec)
    assert "\n" not in str(error.value)


def test_cascade_without_an_image_is_refused(models):
    cascade = CascadeSAM(*models, "iou:0.5")
    with pytest.raises(InvalidInputError, match="no image is set"):
        cascade.predict(box=BOXES)
