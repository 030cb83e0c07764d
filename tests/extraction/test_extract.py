import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import SMALL_OVERRIDE_ARGS, TWO_SIZES, wrap_models, write_folder_dataset
from usam import sam2_adapter
from usam.datasets import open_dataset
from usam.errors import InvalidInputError
from usam.extraction import ExtractionOptions, Extractor, default_prompt_batch_size, parse_shard, run_extraction
from usam.extraction.prompts import sample_prompts
from usam.predictor import UncertainSAM
from usam.store import read_table, token_arrays


@pytest.fixture(scope="module")
def sam_models(two_size_sam2):
    return two_size_sam2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "folder")


def _rows_by_key(table):
    rows = table.to_pylist()
    return {(row["image_key"], row["object_id"], row["model"]): row for row in rows}


def test_extraction_end_to_end_with_monte_carlo(dataset, sam_models, tmp_path):
    reader = open_dataset("folder", dataset, "all")
    counts = run_extraction(reader, wrap_models(sam_models), tmp_path / "store", progress=False)
    assert counts == {"images": 3, "images_before": 0, "objects": 6, "rows": 12, "skipped": 0}
    table = read_table(tmp_path / "store")
    rows = _rows_by_key(table)
    assert len(rows) == 12
    sample = reader.load("img01")
    for object_id, truth in sample.masks.items():
        tiny, large = rows[("img01", object_id, "sam2.1-tiny")], rows[("img01", object_id, "sam2.1-large")]
        for row in (tiny, large):
            ious = np.array(row["mask_ious"])
            assert row["iou"] == pytest.approx(ious.max())
            assert row["unsupervised_iou"] == pytest.approx(ious[np.argmax(row["sam_scores"])])
            assert row["iou_dense_prompt"] == pytest.approx(max(row["dense_mask_ious"]))
            assert row["prompt_gap"] == pytest.approx(row["iou_dense_prompt"] - row["iou"], abs=1e-6)
            assert row["task_gap"] == pytest.approx(row["iou"] - row["unsupervised_iou"], abs=1e-6)
            assert row["object_area"] == int(truth.sum())
            for column in ("h_std", "h_theta", "h_prompt", "h_augmentation", "h_task", "h_all", "h_prompt_sam_pick"):
                assert row[column] is not None
                assert 0.0 <= row[column] <= 1.0
        assert tiny["model_gap"] == pytest.approx(large["iou"] - tiny["iou"], abs=1e-6)
        assert tiny["h_theta"] == large["h_theta"]
        assert tiny["h_all"] == large["h_all"]
        # The prompts are the paper's sampling, and the tokens/IoUs are what UncertainSAM gives for them.
        prompts = sample_prompts(truth, seed=0, image_key="img01", object_id=object_id)
        np.testing.assert_allclose(np.array(tiny["center_point"]).reshape(1, 2), prompts.center)
        np.testing.assert_allclose(np.array(tiny["extra_points"]).reshape(7, 2), prompts.extra)
        model = UncertainSAM(sam2_adapter.make_image_predictor(sam_models["sam2.1-tiny"]))
        model.set_image(sample.image)
        result = model.predict(point_coords=prompts.center, point_labels=[1])
        np.testing.assert_allclose(np.array(tiny["iou_token"]), result.iou_token, atol=1e-4)
        np.testing.assert_allclose(np.array(tiny["sam_scores"]), result.sam_scores, atol=1e-5)
        best = int(np.argmax(tiny["mask_ious"]))
        assert tiny["h_std"] == pytest.approx(result.entropy[best], abs=1e-5)
        expected_ious = [
            (np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum()) for mask in result.masks
        ]
        np.testing.assert_allclose(tiny["mask_ious"], expected_ious, atol=1e-6)
    assert token_arrays(table, "mask_tokens").shape == (12, 4, 256)


def test_without_monte_carlo_and_float16_tokens(dataset, sam_models, tmp_path):
    reader = open_dataset("folder", dataset, "all", limit=1)
    run_extraction(
        reader,
        {"sam2.1-tiny": wrap_models(sam_models)["sam2.1-tiny"]},
        tmp_path / "store",
        options=ExtractionOptions(monte_carlo=False),
        token_dtype="float16",
        progress=False,
    )
    table = read_table(tmp_path / "store")
    assert table.num_rows == 2
    assert token_arrays(table, "iou_token").dtype == np.float16
    for row in table.to_pylist():
        assert row["model_gap"] is None  # no large model
        assert row["h_prompt"] is None
        assert row["h_augmentation"] is None
        assert row["h_all"] is None
        assert row["h_std"] is not None
        assert row["h_task"] is not None


def test_batched_extraction_equals_one_object_at_a_time(dataset, sam_models):
    """Objects batched per image give the rows that extracting each object alone gives."""
    reader = open_dataset("folder", dataset, "all")
    sample = reader.load("img02")
    extractor = Extractor(wrap_models(sam_models), ExtractionOptions(monte_carlo=True))
    batched = {(row["object_id"], row["model"]): row for row in extractor.rows_for_sample(sample)}
    for object_id, mask in sample.masks.items():
        alone = type(sample)(sample.image_key, sample.image, {object_id: mask}, sample.dataset, sample.split)
        for row in extractor.rows_for_sample(alone):
            other = batched[(object_id, row["model"])]
            for column in ("iou", "unsupervised_iou", "iou_dense_prompt", "model_gap", "h_std", "h_all", "h_prompt"):
                assert row[column] == pytest.approx(other[column], abs=1e-4), column
            np.testing.assert_allclose(row["iou_token"], other["iou_token"], atol=1e-4)


def test_rows_do_not_depend_on_the_prompt_batch_size(dataset, sam_models):
    """One prompt per decoder call, the CPU default and one call for everything give the same rows."""
    sample = open_dataset("folder", dataset, "all").load("img01")
    wrappers = wrap_models(sam_models)
    rows = {
        batch: Extractor(wrappers, ExtractionOptions(prompt_batch_size=batch)).rows_for_sample(sample)
        for batch in (1, None, 1000)
    }
    assert len(rows[None]) == len(sample.masks) * len(TWO_SIZES)
    for batch in (1, 1000):
        for row, reference in zip(rows[batch], rows[None], strict=True):
            assert (row["object_id"], row["model"]) == (reference["object_id"], reference["model"])
            for column in ("mask_ious", "sam_scores", "dense_mask_ious", "iou_token"):
                np.testing.assert_allclose(row[column], reference[column], atol=1e-5, err_msg=column)
            for column in ("h_prompt", "h_augmentation", "h_all", "h_all_sam_pick", "h_theta"):
                assert row[column] == pytest.approx(reference[column], abs=1e-5), column


def test_default_prompt_batch_size_depends_on_the_device():
    assert default_prompt_batch_size("cpu") == 2
    assert default_prompt_batch_size("cpu", 1024) == 2
    assert default_prompt_batch_size("cpu", 512) == 8
    assert default_prompt_batch_size("cpu", 128) == 64  # capped
    assert default_prompt_batch_size(torch.device("cuda", 0), 128) == 32
    assert default_prompt_batch_size(torch.device("cuda", 0)) == 32
    assert default_prompt_batch_size("mps") == 32
    for wrong in (0, -4, 2.5):
        with pytest.raises(InvalidInputError, match="prompt batch size"):
            ExtractionOptions(prompt_batch_size=wrong)


def test_two_shards_write_one_store(dataset, sam_models, tmp_path):
    wrappers = wrap_models(sam_models)
    options = ExtractionOptions(monte_carlo=False)
    reader = open_dataset("folder", dataset, "all")
    for index in range(2):
        run_extraction(reader, wrappers, tmp_path / "sharded", options=options, shard=(index, 2), progress=False)
    run_extraction(reader, wrappers, tmp_path / "single", options=options, progress=False)
    sharded, single = read_table(tmp_path / "sharded"), read_table(tmp_path / "single")
    assert sorted(_rows_by_key(sharded)) == sorted(_rows_by_key(single))
    again = run_extraction(reader, wrappers, tmp_path / "single", options=options, progress=False)
    assert again["images"] == 0
    assert again["images_before"] == 3


def test_parse_shard():
    assert parse_shard("2/8") == (2, 8)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert parse_shard(
        None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "6", "SLURM_ARRAY_TASK_MIN": "1"}
    ) == (
        4,
        6,
    )
    for bad in ("8/8", "x", "1/0", "-1/2"):
        with pytest.raises(InvalidInputError, match="shard"):
            parse_shard(bad)


@pytest.fixture(scope="module")
def checkpoint_dir(two_size_checkpoint_dir):
    return two_size_checkpoint_dir


def _extract_command(dataset, store, checkpoint_dir, *extra):
    return [
        sys.executable,
        "-m",
        "usam",
        "extract",
        "--dataset",
        "folder",
        "--root",
        str(dataset),
        "--split",
        "all",
        "--out",
        str(store),
        "--models",
        *TWO_SIZES,
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--rows-per-part",
        "2",
        "--no-progress",
        *SMALL_OVERRIDE_ARGS,
        *extra,
    ]


def test_killed_extraction_resumes_with_every_row_once(tmp_path, checkpoint_dir):
    dataset = write_folder_dataset(tmp_path / "data", num_images=10, seed=3)
    store = tmp_path / "store"
    command = _extract_command(dataset, store, checkpoint_dir, "--no-monte-carlo")
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Wait until some parts exist (model building takes a few seconds), then kill at a random moment.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if len(list(store.glob("part-*.parquet"))) >= 1:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.8)))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
    assert kills >= 1, "the extraction finished before it could be killed; make the dataset larger"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    table = read_table(store, columns=["image_key", "object_id", "model"])
    counts = Counter(zip(*(table.column(name).to_pylist() for name in table.column_names), strict=True))
    assert len(counts) == 10 * 2 * 2
    assert set(counts.values()) == {1}


def test_cli_extract_reports_bad_dataset_in_one_line(tmp_path, checkpoint_dir):
    completed = subprocess.run(
        _extract_command(tmp_path / "nothing-here", tmp_path / "store", checkpoint_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert "nothing-here" in completed.stderr


def test_store_info_command(dataset, sam_models, tmp_path, capsys):
    from usam.cli import main

    reader = open_dataset("folder", dataset, "all", limit=2)
    run_extraction(
        reader,
        wrap_models(sam_models),
        tmp_path / "store",
        options=ExtractionOptions(monte_carlo=False),
        progress=False,
    )
    assert main(["store-info", str(tmp_path / "store")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_rows"] == 2 * 2 * 2
    assert info["metadata"]["dataset"] == "folder"
    assert info["completed_images_per_shard"] == {"00000-of-00001": 2}
    assert main(["store-info", str(tmp_path / "nothing")]) == 2


def test_rows_record_the_signals_of_the_center_prompts_call(dataset, sam_models):
    """The signal columns are those of the call that gave the row's tokens and scores (no extra decoder call)."""
    reader = open_dataset("folder", dataset, "all")
    sample = reader.load("img01")
    models = wrap_models({"sam2.1-tiny": sam_models["sam2.1-tiny"]})
    model = models["sam2.1-tiny"]
    calls = []
    handle = model.predictor.model.sam_mask_decoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        rows = Extractor(models, ExtractionOptions(monte_carlo=False)).rows_for_sample(sample)
    finally:
        handle.remove()
    batch = default_prompt_batch_size("cpu", model.input_size)
    assert len(calls) == 2 * -(-len(sample.masks) // batch)  # center and dense calls
    model.set_image(sample.image)
    for row in rows:
        np.testing.assert_array_equal(row["token_sam_scores"][1:], row["sam_scores"])
        center = np.asarray(row["center_point"], np.float32).reshape(1, 2)
        expected = model.predict(point_coords=center, point_labels=np.ones(1), signals=True).signals
        for name, values in expected.items():
            np.testing.assert_allclose(row[name], values, atol=1e-5, err_msg=name)
