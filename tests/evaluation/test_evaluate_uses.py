"""Tests for usam.evaluation.uses on a small token store made here, and for ``usam evaluate-uses``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_row, run_cli
from usam.errors import InvalidInputError
from usam.evaluation.uses import FRACTIONS, ORACLE, RANDOM, evaluate_uses
from usam.heads import random_heads
from usam.store import StoreWriter

TINY, LARGE = "sam2.1-tiny", "sam2.1-large"
NUM_OBJECTS = 60


def make_row(image_key, object_id, model, rng):
    row = random_row(rng)
    mask_ious = rng.uniform(0.05, 0.95, 3)
    sam_scores = rng.uniform(0, 1, 3)
    row.update(
        image_key=image_key, object_id=object_id, model=model, dataset="coco", split="val",
        mask_ious=mask_ious, sam_scores=sam_scores, iou=float(mask_ious.max()),
        task_gap=float(mask_ious.max() - mask_ious[np.argmax(sam_scores)]),
    )  # fmt: skip
    return row


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("uses") / "store"
    rng = np.random.default_rng(0)
    rows_of = {}
    with StoreWriter(root, rows_per_part=30, metadata={}) as writer:
        for image in range(NUM_OBJECTS // 4):
            rows = []
            for obj in range(4):
                tiny, large = (make_row(f"img{image:02d}", f"o{obj}", model, rng) for model in (TINY, LARGE))
                rows_of[(f"img{image:02d}", f"o{obj}")] = tiny
                rows += [tiny, large]
            writer.add_image(f"img{image:02d}", rows)
    return root, rows_of


@pytest.fixture(scope="module")
def heads():
    return random_heads(["iou_tiny", "model_gap", "task_gap"], seed=5)


@pytest.fixture(scope="module")
def result(store, heads):
    return evaluate_uses(store[0], heads, seeds=50, resamples=50)


def per_mask_heads(heads, row):
    """The heads on each of a row's three masks, recomputed here: (heads, 3)."""
    tokens = np.asarray(row["mask_tokens"], np.float32).reshape(4, 256)
    features = np.stack([np.concatenate([row["iou_token"], tokens[k + 1]]) for k in range(3)])
    with torch.no_grad():
        return heads(torch.from_numpy(features)).numpy()


def test_cascade_oracle_dominates_and_random_is_the_straight_line(result):
    curves = result.cascade_curves
    for name, values in curves.items():
        assert np.all(curves[ORACLE] >= values - 1e-12), name
    start, end = curves["none"][0], curves[ORACLE][-1]
    np.testing.assert_allclose(curves[RANDOM], start + FRACTIONS * (end - start), atol=0.02)
    for name in ("usam model_gap", "usam predicted IoU", "SAM score"):
        assert curves[name][0] == pytest.approx(start)
        assert curves[name][-1] == pytest.approx(end)
    assert result.cascade_relative_auc[ORACLE].value == pytest.approx(100.0)
    auc = result.cascade_relative_auc["usam model_gap"]
    assert auc.low <= auc.value <= auc.high
    assert result.num_objects == NUM_OBJECTS


def test_cascade_entropy_is_that_of_sams_pick_not_of_the_best_mask(result, store):
    """A cascade cannot know which mask is best: its entropy baseline ranks by the entropy of SAM's pick."""
    import pyarrow.compute as pc

    from usam.metrics import correction_curve
    from usam.store import StoreReader

    large = StoreReader(store[0]).read(["image_key", "object_id", "iou"], pc.field("model") == LARGE).to_pylist()
    large_iou = {(row["image_key"], row["object_id"]): row["iou"] for row in large}
    keys = sorted(store[1])
    base = np.array([store[1][key]["iou"] for key in keys])
    corrected = np.array([large_iou[key] for key in keys])

    def curve(column):
        values = np.array([store[1][key][column] for key in keys])
        return correction_curve(base, corrected, values, fractions=FRACTIONS).mean_iou

    np.testing.assert_allclose(result.cascade_curves["entropy H_std"], curve("h_std_sam_pick"), atol=1e-9)
    assert not np.allclose(curve("h_std_sam_pick"), curve("h_std"))  # the fixture tells the two columns apart


def test_mask_choice_matches_a_recomputation(result, store, heads):
    rows = [store[1][key] for key in sorted(store[1])]
    values = [per_mask_heads(heads, row) for row in rows]  # heads order: iou_tiny, model_gap, task_gap
    picks = [int(np.argmax(value[0])) for value in values]
    usam_iou = np.mean([row["mask_ious"][pick] for row, pick in zip(rows, picks, strict=True)])
    sam_iou = np.mean([row["mask_ious"][np.argmax(row["sam_scores"])] for row in rows])
    assert result.mask_choice["usam_pick"].value == pytest.approx(usam_iou, abs=1e-6)
    assert result.mask_choice["sam_pick"].value == pytest.approx(sam_iou, abs=1e-6)
    assert result.mask_choice["best_of_three"].value >= max(usam_iou, sam_iou)
    flagged = np.array([value[2][pick] > 0.1 for value, pick in zip(values, picks, strict=True)])
    truth = np.array([row["task_gap"] > 0.1 for row in rows])
    assert result.mask_choice["flagged_fraction"].value == pytest.approx(flagged.mean())
    if flagged.any():
        assert result.mask_choice["flag_precision"].value == pytest.approx((flagged & truth).sum() / flagged.sum())
    assert result.mask_choice["flag_recall"].value == pytest.approx((flagged & truth).sum() / truth.sum())


def test_pseudo_label_oracle_dominates_and_random_is_the_base_rate(result, store):
    rows = store[1].values()
    for key, threshold in (("iou>=0.5", 0.5), ("iou>=0.75", 0.75)):
        curves = result.pseudo_label_curves[key]
        base_rate = np.mean([row["mask_ious"][np.argmax(row["sam_scores"])] >= threshold for row in rows])
        assert curves[RANDOM][-1] == pytest.approx(base_rate)
        assert np.abs(curves[RANDOM][20:] - base_rate).max() < 0.1
        for name in ("usam predicted IoU", "SAM score"):
            assert np.all(curves[ORACLE] >= curves[name] - 1e-12), name
            assert curves[name][-1] == pytest.approx(base_rate)
        assert set(result.pseudo_label_relative_area[key]) >= {"usam predicted IoU", "usam_own_pick", "SAM score"}


def test_json_is_strict_and_the_cli_writes_every_file(store, heads, tmp_path, capsys):
    heads.save(tmp_path / "heads.safetensors")
    out = tmp_path / "report"
    status, _stdout, stderr = run_cli(
        ["evaluate-uses", "--data", store[0], "--heads", tmp_path / "heads.safetensors", "--out", out,
         "--seeds", "2", "--resamples", "20"], capsys
    )  # fmt: skip
    assert status == 0, stderr
    for name in ("uses.json", "uses.md", "uses_cascade.png", "uses_pseudo_labels.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "uses.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert data["large_model"] == LARGE
    assert len(data["cascade"]["curves"][ORACLE]) == FRACTIONS.size
    assert "| usam model_gap |" in (out / "uses.md").read_text()


def test_missing_large_model_is_a_one_line_error(tmp_path, heads, capsys):
    from conftest import write_tied_store

    write_tied_store(tmp_path / "store")
    with pytest.raises(InvalidInputError, match="--large"):
        evaluate_uses(tmp_path / "store", heads, resamples=5)
    heads.save(tmp_path / "heads.safetensors")
    status, _, stderr = run_cli(
        ["evaluate-uses", "--data", tmp_path / "store", "--heads", tmp_path / "heads.safetensors", "--out",
         tmp_path / "r"], capsys
    )  # fmt: skip
    assert status == 2
    assert stderr.startswith("usam: error:")
    assert stderr.count("\n") == 1


def test_heads_that_read_signals_see_each_masks_own_signals_as_the_predictor_does(two_size_sam2, tmp_path):
    """The uses score every mask with its own signal vector: the per-mask values equal the predictor's own."""
    from test_evaluate import FAST_TRAINING

    from conftest import wrap_models, write_folder_dataset
    from usam.datasets import open_dataset
    from usam.evaluation.uses import read_use_rows
    from usam.extraction import ExtractionOptions, run_extraction
    from usam.heads import INPUTS_OF_VARIANT, InputsVariant
    from usam.predictor import UncertainSAM
    from usam.store import StoreReader
    from usam.training import load_training_data, train_heads

    reader = open_dataset("folder", write_folder_dataset(tmp_path / "data", num_images=2), "all")
    models = wrap_models(two_size_sam2)
    run_extraction(reader, models, tmp_path / "store", options=ExtractionOptions(monte_carlo=False), progress=False)
    inputs = INPUTS_OF_VARIANT[InputsVariant.TOKENS_SIGNALS]
    data = load_training_data(tmp_path / "store", ["iou_tiny", "task_gap"], inputs=inputs)
    heads, _ = train_heads(data, hyper_parameters=FAST_TRAINING, validation_fraction=0, progress=False)
    store = StoreReader(tmp_path / "store")
    rows = read_use_rows(store, heads, TINY, LARGE)
    table = store.read(["image_key", "object_id", "center_point"], pc_model(TINY)).to_pylist()
    table.sort(key=lambda row: (row["image_key"], row["object_id"]))
    assert rows.predicted_iou.shape == (len(table), 3)
    wrapped = UncertainSAM(models[TINY].predictor, heads)
    for index, row in enumerate(table):
        wrapped.set_image(reader.load(row["image_key"]).image)
        result = wrapped.predict(point_coords=np.array([row["center_point"]]), point_labels=np.array([1]))
        np.testing.assert_allclose(rows.predicted_iou[index], result.uncertainty["iou_tiny"], atol=1e-4)
        np.testing.assert_allclose(rows.head_values["task_gap"][index], result.uncertainty["task_gap"], atol=1e-4)


def pc_model(name):
    import pyarrow.compute as pc

    return pc.field("model") == name
