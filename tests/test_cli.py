import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_small_sam2, write_authors_heads
from usam import sam2_adapter
from usam.cli import main
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads

SMALL = [f"--hydra-override={override}" for override in sam2_adapter.small_model_overrides(128)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    torch.save({"model": build_small_sam2(seed=5).state_dict()}, folder / "small.pt")
    random_heads(seed=2, sam2_version="sam2.1").save(folder / "heads.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / "photo.png")
    Image.fromarray((rng.random((60, 80)) * 65535).astype(np.uint16)).save(folder / "deep.png")
    (folder / "notes.png").write_text("not an image")
    return folder


def _run(argv, capsys):
    status = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_predict_writes_json_and_png(files, tmp_path, capsys):
    status, out, err = _run(
        [
            "predict",
            files / "photo.png",
            "--checkpoint",
            files / "small.pt",
            *SMALL,
            "--heads",
            files / "heads.safetensors",
            "--point",
            "30,40",
            "--point",
            "50,20",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert status == 0, err
    record = json.loads((tmp_path / "photo.json").read_text())
    assert len(record["masks"]) == 3
    for entry in record["masks"]:
        assert set(entry) >= {"sam_score", "entropy", "area", "uncertainty"}
        assert set(entry["uncertainty"]) == set(HEAD_NAMES)
        assert 0.0 <= entry["entropy"] <= 1.0
        rle = entry["segmentation"]
        assert sum(rle["counts"][1::2]) == entry["area"]
        assert rle["size"] == [60, 80]
    assert record["prompt"]["points"] == [[30.0, 40.0], [50.0, 20.0]]
    png = Image.open(tmp_path / "photo.png")
    assert png.size[0] > 600
    assert "mask 0:" in out


def test_predict_single_mask_with_box_and_16_bit_image(files, tmp_path, capsys):
    status, _, err = _run(
        [
            "predict",
            files / "deep.png",
            "--checkpoint",
            files / "small.pt",
            *SMALL,
            "--box",
            "5,5,60,50",
            "--single-mask",
            "--out",
            tmp_path,
        ],
        capsys,
    )
    assert status == 0, err
    record = json.loads((tmp_path / "deep.json").read_text())
    assert len(record["masks"]) == 1
    assert record["masks"][0]["uncertainty"] == {}
    assert "no --heads" in err


def test_authors_heads_folder_works_in_predict(files, tmp_path, capsys):
    write_authors_heads(tmp_path / "sam2.1", names=["task_gap", "iou_tiny"])
    status, _, err = _run(
        [
            "predict",
            files / "photo.png",
            "--checkpoint",
            files / "small.pt",
            *SMALL,
            "--heads",
            tmp_path / "sam2.1",
            "--point",
            "30,40",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert status == 0, err
    record = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert record["heads_pairing"] == "as-released"
    assert set(record["masks"][0]["uncertainty"]) == {"task_gap", "iou_tiny"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{photo}", "--point", "30,40"], None),
        (["{missing}", "--point", "30,40"], "does not exist"),
        (["{notes}", "--point", "30,40"], "cannot be read"),
        (["{photo}"], "no prompt"),
        (["{photo}", "--point", "30"], "expected X,Y"),
        (["{photo}", "--point", "nan,3"], "NaN"),
        (["{photo}", "--point", "500,3"], "outside the image"),
        (["{photo}", "--box", "1,2,3"], "X0,Y0,X1,Y1"),
        (["{photo}", "--point", "3,3", "--model", "sam9-huge"], "unknown SAM2 model"),
        (["{photo}", "--point", "3,3", "--heads", "{corrupt_heads}"], "corrupt"),
        (["{photo}", "--point", "3,3", "--heads", "{unknown_heads}"], "unknown head folder"),
        (["{photo}", "--point", "3,3", "--checkpoint", "{truncated_ckpt}"], "truncated"),
        (["{photo}", "--point", "3,3", "--checkpoint", "{missing}"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(files, tmp_path, capsys, argv, message):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((files / "heads.safetensors").read_bytes()[:3000])
    write_authors_heads(tmp_path / "unknown", names=["iou_tiny"])
    (tmp_path / "unknown" / "iou_gigantic").mkdir()
    torch.save({}, tmp_path / "unknown" / "iou_gigantic" / "model.pth")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((files / "small.pt").read_bytes()[:10000])
    names = {
        "photo": files / "photo.png",
        "missing": tmp_path / "missing.png",
        "notes": files / "notes.png",
        "corrupt_heads": corrupt,
        "unknown_heads": tmp_path / "unknown",
        "truncated_ckpt": truncated,
    }
    argv = [part.format(**names) for part in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(files / "small.pt")]
    status, _, err = _run(["predict", *argv, *SMALL, "--out", tmp_path / "out"], capsys)
    if message is None:
        assert status == 0, err
        return
    assert status == 2
    lines = [line for line in err.splitlines() if not line.startswith("usam: note")]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_console_script_prints_no_traceback(files, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "usam",
            "predict",
            str(files / "photo.png"),
            "--point",
            "1,1",
            "--heads",
            str(tmp_path / "none.safetensors"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0
    assert "none.safetensors: no such heads file" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_help_explains_every_option(capsys):
    for command in ["predict", "selfcheck", "models", "convert-heads", "heads-info"]:
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: usam " + command in text
    assert main(["--help"]) == 0
    assert "selfcheck" in capsys.readouterr().out


def test_selfcheck_runs_offline(tmp_path, capsys):
    status, out, err = _run(["selfcheck", "--image-size", "128", "--out", tmp_path], capsys)
    assert status == 0, err
    assert "meaningless" in out
    record = json.loads((tmp_path / "selfcheck.json").read_text())
    assert "meaningless" in record["warning"]
    assert set(record["masks"][0]["uncertainty"]) == set(HEAD_NAMES)
    assert (tmp_path / "selfcheck.png").stat().st_size > 10_000


def test_convert_and_inspect_authors_heads(tmp_path, capsys):
    write_authors_heads(tmp_path / "mlps" / "sam2.1")
    status, out, _ = _run(["convert-heads", tmp_path / "mlps" / "sam2.1", tmp_path / "h.safetensors"], capsys)
    assert status == 0
    assert "as-released" in out
    status, out, _ = _run(["heads-info", tmp_path / "h.safetensors"], capsys)
    assert status == 0
    info = json.loads(out)
    assert info["sam2_version"] == "sam2.1"
    assert info["names"] == list(HEAD_NAMES)


def test_models_lists_cache_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam2.1_hiera_large.pt").write_bytes(b"x")
    status, out, _ = _run(["models"], capsys)
    assert status == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "cached" in lines["sam2.1-large"]
    assert "not downloaded" in lines["sam2.1-tiny"]
