import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import build_small_sam2, run_cli, write_authors_heads
from usam import sam2_adapter
from usam.cli import build_parser, main
from usam.head_table import HEAD_NAMES
from usam.heads import random_heads
from usam.outputs import decode_rle, rle_counts

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


def test_predict_writes_json_and_png(files, tmp_path, capsys):
    status, out, err = run_cli(
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
    record = json.loads((tmp_path / "photo.usam.json").read_text())
    assert len(record["objects"]) == 1
    assert len(record["objects"][0]["masks"]) == 3
    for entry in record["objects"][0]["masks"]:
        assert set(entry) >= {"sam_score", "entropy", "area", "uncertainty"}
        assert set(entry["uncertainty"]) == set(HEAD_NAMES)
        assert 0.0 <= entry["entropy"] <= 1.0
        rle = entry["segmentation"]
        assert decode_rle(rle).sum() == entry["area"]
        assert rle["size"] == [60, 80]
    assert record["objects"][0]["prompt"]["points"] == [[30.0, 40.0], [50.0, 20.0]]
    png = Image.open(tmp_path / "photo.usam.png")
    assert png.size[0] > 600
    assert "mask 0:" in out


def test_predict_single_mask_with_box_and_16_bit_image(files, tmp_path, capsys):
    status, _, err = run_cli(
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
    record = json.loads((tmp_path / "deep.usam.json").read_text())
    assert len(record["objects"][0]["masks"]) == 1
    assert record["objects"][0]["masks"][0]["uncertainty"] == {}
    assert "no --heads" in err


def test_authors_heads_folder_works_in_predict(files, tmp_path, capsys):
    write_authors_heads(tmp_path / "sam2.1", names=["task_gap", "iou_tiny"])
    status, _, err = run_cli(
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
    record = json.loads((tmp_path / "out" / "photo.usam.json").read_text())
    assert record["heads_pairing"] == "as-released"
    assert set(record["objects"][0]["masks"][0]["uncertainty"]) == {"task_gap", "iou_tiny"}


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
    status, _, err = run_cli(["predict", *argv, *SMALL, "--out", tmp_path / "out"], capsys)
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
    status, out, err = run_cli(["selfcheck", "--image-size", "128", "--out", tmp_path], capsys)
    assert status == 0, err
    assert "meaningless" in out
    record = json.loads((tmp_path / "selfcheck.usam.json").read_text())
    assert "meaningless" in record["warning"]
    assert set(record["objects"][0]["masks"][0]["uncertainty"]) == set(HEAD_NAMES)
    assert (tmp_path / "selfcheck.usam.png").stat().st_size > 10_000


def test_convert_and_inspect_authors_heads(tmp_path, capsys):
    write_authors_heads(tmp_path / "mlps" / "sam2.1")
    status, out, _ = run_cli(["convert-heads", tmp_path / "mlps" / "sam2.1", tmp_path / "h.safetensors"], capsys)
    assert status == 0
    assert "as-released" in out
    status, out, _ = run_cli(["heads-info", tmp_path / "h.safetensors"], capsys)
    assert status == 0
    info = json.loads(out)
    assert info["sam2_version"] == "sam2.1"
    assert info["names"] == list(HEAD_NAMES)


def test_models_lists_cache_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "sam2.1_hiera_large.pt").write_bytes(b"x")
    status, out, _ = run_cli(["models"], capsys)
    assert status == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "cached" in lines["sam2.1-large"]
    assert "not downloaded" in lines["sam2.1-tiny"]


def _predict_argv(files, image, out, *extra):
    return ["predict", image, "--checkpoint", files / "small.pt", *SMALL, *extra, "--out", out]


def _one_error_line(err):
    lines = [line for line in err.splitlines() if not line.startswith("usam: note")]
    assert len(lines) == 1, err
    assert lines[0].startswith("usam: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_predict_into_the_image_folder_keeps_the_image(files, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes((files / "photo.png").read_bytes())
    original = image.read_bytes()
    status, _, err = run_cli(_predict_argv(files, image, tmp_path, "--point", "30,40"), capsys)
    assert status == 0, err
    assert image.read_bytes() == original
    assert (tmp_path / "photo.usam.json").is_file()
    assert (tmp_path / "photo.usam.png").is_file()


def test_predict_refuses_an_output_that_is_the_input(files, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes((files / "photo.png").read_bytes())
    original = image.read_bytes()
    (tmp_path / "out").mkdir()
    os.link(image, tmp_path / "out" / "photo.usam.png")  # the figure's name, but the same file as the input
    status, _, err = run_cli(_predict_argv(files, image, tmp_path / "out", "--point", "30,40"), capsys)
    assert status == 2
    assert "is the input" in _one_error_line(err)
    assert image.read_bytes() == original
    assert not (tmp_path / "out" / "photo.usam.json").exists()


def test_several_boxes_are_several_objects(files, tmp_path, capsys):
    boxes = ["5,5,40,30", "30,20,75,55"]
    argv = ["--box", boxes[0], "--box", boxes[1], "--heads", files / "heads.safetensors"]
    status, out, err = run_cli(_predict_argv(files, files / "photo.png", tmp_path / "both", *argv), capsys)
    assert status == 0, err
    assert "object 1 mask 2" in out
    record = json.loads((tmp_path / "both" / "photo.usam.json").read_text())
    assert [obj["prompt"]["box"] for obj in record["objects"]] == [[5, 5, 40, 30], [30, 20, 75, 55]]
    # Each object of the batched call is what a call with that box alone gives.
    for index, box in enumerate(boxes):
        folder = tmp_path / f"alone{index}"
        argv = ["--box", box, "--heads", files / "heads.safetensors"]
        status, _, err = run_cli(_predict_argv(files, files / "photo.png", folder, *argv), capsys)
        assert status == 0, err
        alone = json.loads((folder / "photo.usam.json").read_text())["objects"][0]["masks"]
        batched = record["objects"][index]["masks"]
        assert [entry["segmentation"] for entry in batched] == [entry["segmentation"] for entry in alone]
        for mine, theirs in zip(batched, alone, strict=True):
            assert mine["sam_score"] == pytest.approx(theirs["sam_score"], abs=1e-4)
            for name, value in theirs["uncertainty"].items():
                assert mine["uncertainty"][name] == pytest.approx(value, abs=1e-4)


def test_points_with_several_boxes_are_refused(files, tmp_path, capsys):
    argv = ["--box", "5,5,40,30", "--box", "30,20,75,55", "--point", "10,10"]
    status, _, err = run_cli(_predict_argv(files, files / "photo.png", tmp_path, *argv), capsys)
    assert status == 2
    assert "cannot tell which object" in _one_error_line(err)


def test_written_files_follow_the_umask(files, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        argv = ["--point", "30,40", "--coco-results", tmp_path / "coco" / "results.json"]
        status, _, err = run_cli(_predict_argv(files, files / "photo.png", tmp_path, *argv), capsys)
        assert status == 0, err
        status, _, err = run_cli(["convert-heads", _authors_folder(tmp_path), tmp_path / "h.safetensors"], capsys)
        assert status == 0, err
    finally:
        os.umask(previous)
    for name in ("photo.usam.json", "photo.usam.png", "coco/results.json", "h.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def _authors_folder(tmp_path):
    folder = tmp_path / "mlps" / "sam2.1"
    write_authors_heads(folder, names=["iou_tiny"])
    return folder


def test_json_is_compact_and_coco_tools_read_it(files, tmp_path, capsys):
    pycocotools_coco = pytest.importorskip("pycocotools.coco")
    results_path = tmp_path / "results.json"
    argv = ["--point", "30,40", "--heads", files / "heads.safetensors", "--coco-results", results_path]
    argv += ["--image-id", "7", "--category-id", "3"]
    status, _, err = run_cli(_predict_argv(files, files / "photo.png", tmp_path, *argv), capsys)
    assert status == 0, err
    text = (tmp_path / "photo.usam.json").read_text()
    record = json.loads(text)
    segmentations = [entry["segmentation"] for entry in record["objects"][0]["masks"]]
    assert all(isinstance(rle["counts"], str) for rle in segmentations)
    # The old layout (uncompressed counts, one number per line) took more than the whole file takes now.
    uncompressed = sum(len(json.dumps(rle_counts(decode_rle(rle)).tolist(), indent=2)) for rle in segmentations)
    assert len(text) < uncompressed
    ground_truth = pycocotools_coco.COCO()
    ground_truth.dataset = {
        "images": [{"id": 7, "height": 60, "width": 80}],
        "annotations": [],
        "categories": [{"id": 3, "name": "object"}],
    }
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(str(results_path))
    annotations = loaded.loadAnns(loaded.getAnnIds(imgIds=[7]))
    masks = record["objects"][0]["masks"]
    assert len(annotations) == len(masks) == 3
    for annotation, entry in zip(annotations, masks, strict=True):
        assert annotation["category_id"] == 3
        assert annotation["score"] == entry["sam_score"]
        assert annotation["area"] == entry["area"]
        assert annotation["uncertainty"] == entry["uncertainty"]
        assert (loaded.annToMask(annotation) == decode_rle(entry["segmentation"])).all()


def test_nan_checkpoint_is_an_error_naming_it(tmp_path, capsys):
    model = build_small_sam2(seed=5)
    with torch.no_grad():
        for parameter in model.sam_mask_decoder.parameters():
            parameter.fill_(float("nan"))
    torch.save({"model": model.state_dict()}, tmp_path / "nan.pt")
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    argv = ["predict", tmp_path / "grey.png", "--checkpoint", tmp_path / "nan.pt", *SMALL, "--point", "10,10"]
    status, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert status == 2
    line = _one_error_line(err)
    assert "NaN" in line
    assert "nan.pt" in line
    assert not (tmp_path / "out" / "grey.usam.json").exists()


@pytest.mark.parametrize("case", ["cache_is_a_file", "hydra_override", "image_size", "out_folder"])
def test_more_user_errors_are_one_line(files, tmp_path, monkeypatch, capsys, case):
    photo = files / "photo.png"
    if case == "cache_is_a_file":
        (tmp_path / "cache").write_text("a file, not a folder")
        monkeypatch.setenv("USAM_CACHE_DIR", str(tmp_path / "cache"))
        argv = ["predict", photo, "--point", "3,3", "--out", tmp_path / "out"]
        expected = "USAM_CACHE_DIR"
    elif case == "hydra_override":
        argv = _predict_argv(files, photo, tmp_path / "out", "--point", "3,3", "--hydra-override", "foo")
        expected = "Hydra override"
    elif case == "image_size":
        argv = ["selfcheck", "--image-size", "100", "--out", tmp_path / "out"]
        expected = "multiple of 32"
    else:
        (tmp_path / "blocker").write_text("a file")

        def fail(*args, **kwargs):
            raise AssertionError("the model must not run before the output folder is checked")

        monkeypatch.setattr("usam.predictor.UncertainSAM.from_pretrained", fail)
        argv = _predict_argv(files, photo, tmp_path / "blocker" / "out", "--point", "3,3")
        expected = "cannot create the output folder"
    status, _, err = run_cli(argv, capsys)
    assert status == 2
    assert expected in _one_error_line(err)


def test_closed_pipe_ends_quietly(files):
    process = subprocess.Popen(
        [sys.executable, "-m", "usam", "heads-info", str(files / "heads.safetensors")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` that has read enough, before usam writes anything
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err


def test_convert_heads_asks_for_the_version(tmp_path, capsys):
    write_authors_heads(tmp_path / "released", names=["iou_tiny"])
    status, _, err = run_cli(["convert-heads", tmp_path / "released", tmp_path / "h.safetensors"], capsys)
    assert status == 2
    assert "pass --sam2-version sam2|sam2.1" in _one_error_line(err)
    assert not (tmp_path / "h.safetensors").exists()
    argv = ["convert-heads", tmp_path / "released", tmp_path / "h.safetensors", "--sam2-version", "sam2"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0, err
    assert "for sam2" in out


def test_version_mismatch_is_one_usam_warning(files, tmp_path, capsys):
    random_heads(["iou_tiny"], sam2_version="sam2").save(tmp_path / "old.safetensors")
    argv = ["--point", "30,40", "--heads", tmp_path / "old.safetensors"]
    status, _, err = run_cli(_predict_argv(files, files / "photo.png", tmp_path, *argv), capsys)
    assert status == 0, err
    warnings_printed = [line for line in err.splitlines() if "trained for sam2" in line]
    assert len(warnings_printed) == 1, err
    assert warnings_printed[0].startswith("usam: warning: these heads were trained for sam2")
    assert "UserWarning" not in err


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command")
    assert len(subcommands.choices) >= 10
    undocumented = [
        f"usam {command} {action.option_strings or action.dest}"
        for command, subparser in subcommands.choices.items()
        for action in subparser._actions
        if not action.help
    ]
    assert undocumented == []
