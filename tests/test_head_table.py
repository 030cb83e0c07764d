import numpy as np
import pytest

from usam.errors import InvalidInputError
from usam.extraction.targets import best_output
from usam.head_table import GAP_HEAD_NAMES, HEAD_NAMES, HEADS, SIZE_HEADS, HeadKind, head_spec
from usam.models import SIZES, get_model_spec
from usam.presets import PAPER_DEPARTURES, PRESETS, Preset, TieRule


def test_the_table_has_the_nine_heads_of_the_paper_in_order():
    assert HEAD_NAMES == (
        "iou_tiny",
        "iou_small",
        "iou_base_plus",
        "iou_large",
        "iou_unsupervised",
        "iou_dense_prompt",
        "model_gap",
        "prompt_gap",
        "task_gap",
    )
    assert GAP_HEAD_NAMES == ("model_gap", "prompt_gap", "task_gap")
    assert SIZE_HEADS == {"iou_tiny": "tiny", "iou_small": "small", "iou_base_plus": "base-plus", "iou_large": "large"}
    for size in SIZES:
        assert get_model_spec(f"sam2.1-{size}").head_name in SIZE_HEADS


def test_head_properties():
    assert HEADS["task_gap"].kind is HeadKind.GAP
    assert HEADS["task_gap"].output_offset == 0.5
    assert HEADS["task_gap"].higher_is_uncertain
    assert not HEADS["iou_large"].higher_is_uncertain
    assert HEADS["iou_large"].output_offset == 0.0
    assert HEADS["iou_unsupervised"].target_column == "unsupervised_iou"
    np.testing.assert_allclose(HEADS["model_gap"].training_target(np.array([-0.6, 0.0, 0.2, 0.9])), [0, 0.5, 0.7, 1])
    np.testing.assert_allclose(HEADS["iou_tiny"].training_target(np.array([0.25])), [0.25])
    with pytest.raises(InvalidInputError, match="unknown head 'iou_huge'"):
        head_spec("iou_huge")


def test_best_output_tie_rules():
    ious = np.array([[0.2, 0.7, 0.7], [0.9, 0.9, 0.1], [np.nan, np.nan, 0.0], [0.3, 0.2, 0.1]])
    assert best_output(ious, TieRule.FIRST).tolist() == [1, 0, 2, 0]
    assert best_output(ious, TieRule.LAST).tolist() == [2, 1, 2, 0]
    assert best_output(ious[0], "last") == 2


def test_the_paper_preset_differs_from_usam_where_the_departures_say():
    usam, paper = PRESETS[Preset.USAM], PRESETS[Preset.PAPER]
    assert all(name.startswith("sam2-") for name in paper.models)
    assert all(name.startswith("sam2.1-") for name in usam.models)
    assert paper.tie_rule is TieRule.LAST
    assert usam.tie_rule is TieRule.FIRST
    assert paper.evaluation_model == "large"
    switched = [departure for departure in PAPER_DEPARTURES if departure.preset_paper]
    assert len(switched) == 6  # version, precision, tie rule, DAVIS frames, correlation model, pooled size heads
