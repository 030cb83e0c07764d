"""Tests for usam.training.hyper_parameters: the paper's values and the defaults inferred from a store's dataset."""

from __future__ import annotations

import pytest

from usam.errors import InvalidInputError
from usam.head_table import HEAD_NAMES
from usam.training import PAPER_DEFAULTS, HyperParameters, paper_hyper_parameters


def test_paper_defaults():
    assert set(PAPER_DEFAULTS) == {"coco", "ade20k", "sa-v", "davis"}
    davis = paper_hyper_parameters("DAVIS")
    assert set(davis) == set(HEAD_NAMES)
    assert davis["task_gap"] == HyperParameters(lr=0.029406075389, epochs=55, batch_size=158, momentum=0.7093735218048)
    coco = paper_hyper_parameters("coco", ["iou_tiny", "iou_large"])
    assert (coco["iou_tiny"].batch_size, coco["iou_tiny"].epochs, coco["iou_large"].epochs) == (189, 36, 35)
    assert coco["iou_tiny"].weight_decay == 1e-3
    ade = paper_hyper_parameters("ade20k", ["iou_small"])["iou_small"]
    assert (ade.batch_size, ade.epochs, ade.lr, ade.momentum) == (106, 79, 0.0013075788956, 0.8303298246553)
    assert paper_hyper_parameters("SA-V", ["model_gap"])["model_gap"].epochs == 9
    assert paper_hyper_parameters("sav", ["model_gap"])["model_gap"].batch_size == 193
    with pytest.raises(InvalidInputError, match="no paper hyper-parameters"):
        paper_hyper_parameters("kitti")
