"""``usam predict --cascade`` / mask choice fields and ``usam pseudo-labels`` on small random-weight models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_OVERRIDE_ARGS, run_cli
from usam.heads import random_heads


@pytest.fixture
def inputs(tmp_path, rgb_image, two_size_checkpoint_dir, monkeypatch):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "checkpoints").symlink_to(two_size_checkpoint_dir)  # the models "downloaded" before
    monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path / "cache"))
    Image.fromarray(rgb_image).save(tmp_path / "scene.png")
    random_heads(["iou_tiny", "iou_large", "model_gap", "task_gap"], seed=7, sam2_version="sam2.1").save(
        tmp_path / "heads.safetensors"
    )
    return tmp_path


def predict(inputs, capsys, *extra):
    boxes = ["--box", "10,10,60,50", "--box", "40,30,110,90", "--box", "0,0,119,95"]
    argv = ["predict", inputs / "scene.png", "--heads", inputs / "heads.safetensors", *boxes,
            "--out", inputs / "out", *SMALL_OVERRIDE_ARGS, *extra]  # fmt: skip
    return run_cli(argv, capsys)


def test_cascade_escalates_by_the_rule_and_records_who_answered(inputs, capsys):
    status, _, stderr = predict(inputs, capsys, "--cascade", "sam2.1-tiny,sam2.1-large", "--escalate", "iou:1.0")
    assert status == 0, stderr
    record = json.loads((inputs / "out" / "scene.usam.json").read_text())
    assert [obj["cascade"]["answered_by"] for obj in record["objects"]] == ["large"] * 3
    assert (inputs / "out" / "scene.usam.png").exists()
    status, _, stderr = predict(inputs, capsys, "--cascade", "sam2.1-tiny,sam2.1-large", "--escalate", "iou:0.0")
    assert status == 0, stderr
    never = json.loads((inputs / "out" / "scene.usam.json").read_text())
    assert [obj["cascade"]["answered_by"] for obj in never["objects"]] == ["small"] * 3
    assert all(obj["cascade"]["model"] == "sam2.1-tiny" for obj in never["objects"])
    # The small model's answers are what the small model alone writes.
    status, _, _ = predict(inputs, capsys, "--model", "sam2.1-tiny")
    alone = json.loads((inputs / "out" / "scene.usam.json").read_text())
    for cascaded, single in zip(never["objects"], alone["objects"], strict=True):
        assert [m["segmentation"] for m in cascaded["masks"]] == [m["segmentation"] for m in single["masks"]]
        predicted = [m["uncertainty"]["iou_tiny"] for m in single["masks"]]
        assert single["usam_pick"] == int(np.argmax(predicted)) == cascaded["usam_pick"]
        gap = single["masks"][single["usam_pick"]]["uncertainty"]["task_gap"]
        assert single["show_all_masks"] == (gap > 0.1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cascade", "sam2.1-tiny,sam2.1-large"], "go together"),
        (["--cascade", "sam2.1-tiny", "--escalate", "iou:0.5"], "two models"),
        (["--cascade", "sam2.1-tiny,sam2.1-large", "--escalate", "gap=0.1"], "RULE|model-gap:THRESHOLD"),
        (["--cascade", "sam2.1-tiny,sam2.1-large", "--escalate", "iou:2"], "at most 1"),
    ],
)
def test_bad_cascade_options_are_one_line_errors(inputs, capsys, extra, message):
    status, _, stderr = predict(inputs, capsys, *extra)
    assert status == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith("usam: error:")
    assert any(part in stderr for part in message.split("|"))


def test_cascade_heads_without_the_rules_head_name_it(inputs, capsys):
    random_heads(["iou_large"], sam2_version="sam2.1").save(inputs / "heads.safetensors")
    status, _, stderr = predict(inputs, capsys, "--cascade", "sam2.1-tiny,sam2.1-large", "--escalate", "model-gap:0.1")
    assert status == 2
    assert "needs the head(s) model_gap" in stderr


def test_pseudo_labels_command_writes_coco(inputs, capsys):
    from pycocotools.coco import COCO

    prompts = {"images": [{"file": "scene.png", "objects": [{"box": [10, 10, 60, 50]}, {"points": [[80, 60]]}]}]}
    (inputs / "prompts.json").write_text(json.dumps(prompts))
    argv = ["pseudo-labels", inputs, "--prompts", inputs / "prompts.json", "--heads", inputs / "heads.safetensors",
            "--model", "sam2.1-tiny", "--threshold", "0", "--out", inputs / "labels.json", "--no-progress",
            *SMALL_OVERRIDE_ARGS]  # fmt: skip
    status, stdout, stderr = run_cli(argv, capsys)
    assert status == 0, stderr and "kept 2 of 2" in stdout
    assert len(COCO(str(inputs / "labels.json")).getAnnIds()) == 2
    status, _, stderr = run_cli([*argv[: -len(SMALL_OVERRIDE_ARGS) - 1], "--threshold", "1.5"], capsys)
    assert status == 2
    assert "pseudo-label threshold" in stderr
