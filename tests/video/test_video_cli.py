"""``usam video``: JSON and figure of a tracked three-frame video; one-line errors before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_OVERRIDE_ARGS, build_small_sam2, run_cli, write_jpeg_video
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.outputs import decode_rle


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_cli")
    torch.save({"model": build_small_sam2(seed=3).state_dict()}, folder / "small.pt")
    random_heads(HEAD_NAMES, sam2_version="sam2.1").save(folder / "heads.safetensors")
    write_jpeg_video(folder / "clip")
    return folder


def _argv(files, out, *prompts):
    return [
        "video",
        files / "clip",
        "--checkpoint",
        files / "small.pt",
        *SMALL_OVERRIDE_ARGS,
        "--heads",
        files / "heads.safetensors",
        *prompts,
        "--out",
        out,
        "--no-progress",
    ]


def test_video_command_writes_the_json_and_the_figure(files, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = ["--point", "1,60,50", "--box", "1,10,10,30,30,2", "--reprompt-below", "0.99"]
    status, stdout, stderr = run_cli(_argv(files, out, *prompts), capsys)
    assert status == 0, stderr
    record = json.loads((out / "clip.usam-video.json").read_text())
    assert record["format"] == "usam-video"
    assert record["estimate"] == "iou_tiny"  # the heads' IoU for the model's own size
    assert record["frame_size"] == [96, 120]
    # Prompts on frame 1: tracked forward to frame 2 and backward to frame 0.
    assert [frame["frame"] for frame in record["frames"]] == [0, 1, 2]
    for frame in record["frames"]:
        assert [obj["id"] for obj in frame["objects"]] == [1, 2]
        for obj in frame["objects"]:
            assert obj["prompted"] == (frame["frame"] == 1)
            assert set(obj["uncertainty"]) == set(HEAD_NAMES)
            assert 0.0 <= obj["sam_iou"] <= 1.0
            assert obj["mask_token_index"] in (0, 1, 2, 3)
            mask = decode_rle(obj["mask"])
            assert mask.shape == (96, 120)
            assert int(mask.sum()) == obj["area"]
    # Random heads predict about 0.5: every tracked (not prompted) frame is below 0.99.
    assert record["reprompt"] == {"1": [0, 2], "2": [0, 2]}
    assert "re-prompt here: frames [0, 2]" in stdout
    with Image.open(out / "clip.usam-video.png") as picture:
        assert picture.size[0] > 600
        assert picture.size[1] > 400


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (["--point", "60,50"], "expected F,X,Y[,OBJ]"),
        (["--point", "0.5,60,50"], "whole frame number"),
        (["--point", "7,60,50"], "the video has 3 frames"),
        (["--point", "0,500,50"], "outside the 120x96 frame"),
        (["--box", "0,1,1,5,5", "--box", "0,2,2,6,6"], "two --box prompts"),
        ([], "no prompt given"),
    ],
)
def test_bad_prompts_are_one_line_errors(files, tmp_path, capsys, prompts, message):
    status, _, stderr = run_cli(_argv(files, tmp_path / "out", *prompts), capsys)
    assert status == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("content", "message"), [({}, "no JPEG frames"), ({"0.png": b"x"}, "no JPEG frames")])
def test_folders_without_frames_are_one_line_errors(files, tmp_path, capsys, content, message):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, data in content.items():
        (folder / name).write_bytes(data)
    argv = _argv(files, tmp_path / "out", "--point", "0,1,1")
    argv[1] = folder
    status, _, stderr = run_cli(argv, capsys)
    assert status == 2
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_frames_are_listed_in_sam2s_order(tmp_path):
    from usam.video import jpeg_frames

    for index in (10, 2, 1):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{index}.jpg")
    assert [path.name for path in jpeg_frames(tmp_path)] == ["1.jpg", "2.jpg", "10.jpg"]
