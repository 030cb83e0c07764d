"""The whole path a researcher runs: extract a store, train heads on it, evaluate them, use them in predict."""

import json

import numpy as np
import pytest

from conftest import build_small_sam2, write_folder_dataset
from usam import sam2_adapter
from usam.cli import main
from usam.datasets import open_dataset
from usam.extraction import ExtractionOptions, run_extraction
from usam.head_table import HEAD_NAMES
from usam.heads import load_heads
from usam.predictor import UncertainSAM


def _reject_non_finite(literal):
    raise AssertionError(f"results.json holds the non-standard literal {literal}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    dataset = write_folder_dataset(folder / "data", num_images=8, seed=7)
    models = {
        name: UncertainSAM(sam2_adapter.make_image_predictor(build_small_sam2(name, seed=index)))
        for index, name in enumerate(("sam2.1-tiny", "sam2.1-small", "sam2.1-base-plus", "sam2.1-large"))
    }
    reader = open_dataset("folder", dataset, "all")
    # Without the Monte Carlo part (fast); the evaluation skips the entropy measures that are then empty.
    run_extraction(reader, models, folder / "store", options=ExtractionOptions(monte_carlo=False), progress=False)
    return folder / "store"


def test_train_then_evaluate_then_predict(store, tmp_path, capsys):
    heads_path = tmp_path / "heads.safetensors"
    assert main(["train", "--data", str(store), "--out", str(heads_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    heads = load_heads(heads_path)
    assert heads.names == list(HEAD_NAMES)
    assert heads.metadata.pairing == "true"
    assert "iou_tiny" in out

    report = tmp_path / "report"
    status = main(["evaluate", "--data", str(store), "--heads", str(heads_path), "--out", str(report), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert (report / "report.md").read_text().count("|") > 20
    # Strict JSON: a NaN or Infinity literal (which JavaScript's JSON.parse rejects) fails the parse.
    results = json.loads((report / "results.json").read_text(), parse_constant=_reject_non_finite)
    assert "task_supervision" in json.dumps(results)
    plots = sorted(path.name for path in report.glob("*.png"))
    assert "correlation.png" in plots
    assert sum(name.startswith("curves_") for name in plots) == 4

    # The trained heads plug into UncertainSAM like the authors' heads do.
    model = UncertainSAM(sam2_adapter.make_image_predictor(build_small_sam2("sam2.1-tiny", seed=0)), heads_path)
    model.set_image(np.zeros((40, 50, 3), np.uint8))
    result = model.predict(point_coords=[[10.0, 10.0]], point_labels=[1])
    assert set(result.uncertainty) == set(HEAD_NAMES)


def test_train_in_mixed_precision_and_device_errors(store, tmp_path, capsys):
    heads_path = tmp_path / "mixed.safetensors"
    argv = ["train", "--data", str(store), "--out", str(heads_path), "--no-progress", "--heads", "iou_tiny", "task_gap"]
    assert main([*argv, "--precision", "bfloat16", "--device", "cpu"]) == 0
    training = load_heads(heads_path).metadata.training
    assert training["precision"] == "bfloat16"
    assert training["device"] == "cpu"
    capsys.readouterr()

    assert main([*argv, "--device", "tpu:x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "not a torch device" in err[0]
