"""``usam segment-everything`` and ``usam evaluate-automatic`` on small random-weight models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_OVERRIDE_ARGS, run_cli, write_folder_dataset
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.outputs import decode_rle

FAST = ["--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--box-nms-thresh", "1"]


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    return random_heads(HEAD_NAMES, sam2_version="sam2.1", seed=1).save(
        tmp_path_factory.mktemp("heads") / "h.safetensors"
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_sam2):
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"model": small_sam2.state_dict()}, path)
    return path


def model_args(checkpoint):
    return ["--model", "sam2.1-tiny", "--checkpoint", checkpoint, *SMALL_OVERRIDE_ARGS, "--device", "cpu"]


def test_segment_everything_writes_coco_json_and_a_picture(tmp_path, capsys, heads_file, checkpoint, rgb_image):
    Image.fromarray(rgb_image).save(tmp_path / "scene.png")
    status, out, err = run_cli(
        [
            "segment-everything",
            tmp_path / "scene.png",
            *model_args(checkpoint),
            "--heads",
            heads_file,
            "--out",
            tmp_path / "out",
            "--rank-by",
            "predicted_iou",
            *FAST,
        ],
        capsys,
    )
    assert status == 0, err
    document = json.loads((tmp_path / "out" / "scene.usam-masks.json").read_text())
    assert document["format"] == "usam-automatic-masks"
    assert document["iou_head"] == "iou_tiny"
    annotations = document["annotations"]
    assert len(annotations) == 27  # 9 points x 3 masks, nothing filtered
    scores = [entry["score"] for entry in annotations]
    assert scores == sorted(scores, reverse=True)
    for entry in annotations:
        assert entry["score"] == entry["predicted_iou"] == entry["uncertainty"]["iou_tiny"]
        assert set(entry["uncertainty"]) == set(HEAD_NAMES)
        assert decode_rle(entry["segmentation"]).sum() == entry["area"]
        assert 0.0 <= entry["entropy"] <= 1.0
    picture = np.asarray(Image.open(tmp_path / "out" / "scene.usam-masks.png"))
    assert picture.ndim == 3
    assert picture.shape[1] > picture.shape[0]
    assert f"{len(annotations)} masks" in out


def test_segment_everything_refuses_uncalibrated_bounds_in_one_line(
    tmp_path, capsys, heads_file, checkpoint, rgb_image
):
    Image.fromarray(rgb_image).save(tmp_path / "scene.png")
    status, _, err = run_cli(
        [
            "segment-everything",
            tmp_path / "scene.png",
            *model_args(checkpoint),
            "--heads",
            heads_file,
            "--out",
            tmp_path / "out",
            "--min-iou-lower",
            "0.5",
            *FAST,
        ],
        capsys,
    )
    assert status == 2
    assert err.startswith("usam: error:")
    assert "calibrat" in err
    assert err.count("\n") == 1


def test_evaluate_automatic_writes_the_three_aps(tmp_path, capsys, heads_file, checkpoint):
    data = write_folder_dataset(tmp_path / "data", num_images=2)
    status, _out, err = run_cli(
        [
            "evaluate-automatic",
            "--data",
            data,
            *model_args(checkpoint),
            "--heads",
            heads_file,
            "--out",
            tmp_path / "ap",
            "--no-progress",
            *FAST,
        ],
        capsys,
    )
    assert status == 0, err
    summary = json.loads((tmp_path / "ap" / "automatic_ap.json").read_text())
    assert summary["images"] == 2
    assert summary["masks"] == 2 * 27
    assert set(summary["ap"]) == {"sam_score", "stability_score", "predicted_iou"}
    for values in summary["ap"].values():
        assert 0.0 <= values["AP"] <= 1.0
    assert "| predicted_iou |" in (tmp_path / "ap" / "automatic_ap.md").read_text()
