import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SMALL_OVERRIDE_ARGS, build_small_sam2, run_cli, write_folder_dataset
from usam.heads import random_heads


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clicks-cli")
    torch.save({"model": build_small_sam2(seed=5).state_dict()}, folder / "small.pt")
    random_heads(seed=2, sam2_version="sam2.1").save(folder / "heads.safetensors")
    random_heads(["iou_tiny", "task_gap"], sam2_version="sam2.1").save(folder / "no-gap.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / "photo.png")
    write_folder_dataset(folder / "data", num_images=2, size=(48, 64))
    return folder


def model_args(files):
    return ["--checkpoint", files / "small.pt", *SMALL_OVERRIDE_ARGS, "--device", "cpu"]


def test_next_click_writes_the_proposal(files, tmp_path, capsys):
    argv = ["next-click", files / "photo.png", *model_args(files), "--heads", files / "heads.safetensors"]
    status, out, err = run_cli([*argv, "--point", "40,30", "--threshold", "-0.5", "--out", tmp_path], capsys)
    assert status == 0, err
    record = json.loads((tmp_path / "photo.next-click.json").read_text())
    x, y = record["next_click"]
    assert 0 <= x < 80
    assert 0 <= y < 60
    assert record["needed"] is True  # every predicted gap exceeds -0.5
    assert record["mask"]["size"] == [60, 80]
    assert (tmp_path / "photo.next-click.png").stat().st_size > 0
    assert f"next click at ({x}, {y})" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--threshold", "0.9"], "--threshold must be at most 0.5"), (["--threshold", "nan"], "finite number")],
)
def test_next_click_bad_threshold_is_one_line(files, tmp_path, capsys, extra, message):
    argv = ["next-click", files / "photo.png", *model_args(files), "--heads", files / "heads.safetensors"]
    status, _, err = run_cli([*argv, "--point", "40,30", *extra, "--out", tmp_path], capsys)
    assert status == 2
    assert err.startswith("usam: error:")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_next_click_refuses_heads_without_prompt_gap(files, tmp_path, capsys):
    argv = ["next-click", files / "photo.png", *model_args(files), "--heads", files / "no-gap.safetensors"]
    status, _, err = run_cli([*argv, "--point", "40,30", "--out", tmp_path], capsys)
    assert status == 2
    assert "prompt_gap" in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_clicks_writes_json_markdown_and_figure(files, tmp_path, capsys):
    argv = ["evaluate-clicks", "--data", files / "data", *model_args(files), "--heads", files / "heads.safetensors"]
    options = ["--max-clicks", "2", "--gate-clicks", "2", "--limit", "1", "--strategies", "error-region", "random"]
    status, out, err = run_cli([*argv, *options, "--no-progress", "--out", tmp_path], capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "clicks.json").read_text())
    assert set(report["results"]) == {"error-region", "random"}
    assert report["results"]["random"]["objects"] == 2
    assert "NoC@85" in (tmp_path / "clicks.md").read_text()
    assert (tmp_path / "clicks.png").stat().st_size > 0
    assert "error-region: NoC@85" in out
    status, _, err = run_cli([*argv, "--max-clicks", "2", "--gate-clicks", "3", "--out", tmp_path], capsys)
    assert status == 2
    assert "--gate-clicks must be at most 2" in err
