"""COCO mask AP of automatic masks under three rankings, on hand-made cases whose order is known."""

from __future__ import annotations

import numpy as np
import pytest

from usam.automatic import PREDICTED_IOU_KEY
from usam.errors import InvalidInputError
from usam.evaluation.automatic import AP_STATISTICS, ap_table, automatic_mask_ap


def square(top, left, side, size=(64, 64)):
    mask = np.zeros(size, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def record(mask, sam, stability, predicted):
    return {"segmentation": mask, "predicted_iou": sam, "stability_score": stability, PREDICTED_IOU_KEY: predicted}


def case():
    """Two objects; two exact masks and two bad ones. Each score ranks the good masks differently."""
    truth = {"a": square(2, 2, 20), "b": square(30, 30, 25)}
    records = [
        record(square(2, 2, 20), sam=0.2, stability=0.9, predicted=0.9),  # good
        record(square(30, 30, 25), sam=0.3, stability=0.1, predicted=0.8),  # good
        record(square(40, 0, 10), sam=0.9, stability=0.8, predicted=0.1),  # matches nothing
        record(square(0, 40, 12), sam=0.8, stability=0.2, predicted=0.2),  # matches nothing
    ]
    return truth, records


def test_the_ranking_that_puts_the_good_masks_first_gets_ap_1():
    results = automatic_mask_ap([case()])
    assert set(results) == {"sam_score", "stability_score", "predicted_iou"}
    assert results["predicted_iou"]["AP"] == pytest.approx(1.0)  # both good masks first
    assert results["sam_score"]["AP"] < results["stability_score"]["AP"] < results["predicted_iou"]["AP"]
    for values in results.values():
        assert set(values) == set(AP_STATISTICS)
        assert values["AR100"] == pytest.approx(1.0)  # the same masks: every object is found under each ranking


def test_a_missed_object_caps_ap_whatever_the_ranking():
    truth, records = case()
    truth["c"] = square(50, 2, 10)
    results = automatic_mask_ap([(truth, records)], rankings=["predicted_iou"])
    assert results["predicted_iou"]["AP"] == pytest.approx(2 / 3, abs=0.02)  # recall stops at 2 of 3


def test_records_without_usam_scores_cannot_rank_by_them():
    truth, records = case()
    for entry in records:
        entry[PREDICTED_IOU_KEY] = None
    with pytest.raises(InvalidInputError, match="without heads"):
        automatic_mask_ap([(truth, records)])


def test_ap_table_lists_every_ranking():
    table = ap_table(automatic_mask_ap([case()]))
    assert table.count("\n") == 4
    assert "| predicted_iou | 1.000 |" in table
