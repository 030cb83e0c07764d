"""Tests for usam.evaluation on a small synthetic token store whose true values are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import random_row
from usam.cli import main
from usam.errors import InvalidInputError
from usam.evaluation import ABLATION_VARIANTS, AUC_RANGES, ENTROPY_MEASURES, run_evaluation
from usam.head_table import HEAD_NAMES, SIZE_TARGETS_KEY, SizeTargets
from usam.heads import random_heads
from usam.metrics import CORRECTION_SCENARIOS, correction_curve, no_correction_curve, oracle_curve, relative_auc
from usam.store import StoreWriter
from usam.training import HyperParameters

NUM_IMAGES = 16
OBJECTS_PER_IMAGE = 5
TINY, LARGE = "sam2.1-tiny", "sam2.1-large"
FAST_TRAINING = HyperParameters(lr=0.01, epochs=2, batch_size=16, momentum=0.9)


# Synthetic store -------------------------------------------------------------------------------------------------


def synthetic_row(image_key, object_id, model, iou, rng, *, large_iou=None, h_prompt_null=False):
    """One store row whose values are consistent with each other.

    ``iou`` is a multiple of 1/256 (exact in float32), so that ``h_std = 1 - iou`` and ``sam_scores[best] = iou``
    order objects exactly as the true gain of segmentation uncertainty, ``1 - iou``, does.
    """
    best = int(rng.integers(3))
    mask_ious = rng.uniform(0.0, iou, 3)
    mask_ious[best] = iou
    sam_scores = rng.uniform(0.0, 1.0, 3)
    sam_scores[best] = iou
    unsupervised_iou = float(mask_ious[np.argmax(sam_scores)])
    dense_iou = float(np.clip(iou + rng.uniform(-0.1, 0.4), 0.0, 1.0))
    row = random_row(rng)
    row.update(
        image_key=image_key,
        object_id=object_id,
        model=model,
        dataset="coco",
        split="val",
        sam_scores=sam_scores,
        mask_ious=mask_ious,
        iou=iou,
        unsupervised_iou=unsupervised_iou,
        iou_dense_prompt=dense_iou,
        model_gap=None if large_iou is None else large_iou - iou,
        prompt_gap=dense_iou - iou,
        task_gap=iou - unsupervised_iou,
        h_std=1.0 - iou,
        h_theta=None,  # as if this part of the Monte Carlo estimate had been skipped
        h_theta_sam_pick=None,
        h_prompt=None if h_prompt_null else float(rng.random()),
        h_prompt_sam_pick=None if h_prompt_null else float(rng.random()),
    )
    return row


def write_synthetic_store(root, seed=0, *, nonfinite_tokens=False, metadata=None):
    """Tiny and large rows for every object, plus one object with only a tiny and one with only a large row.

    ``nonfinite_tokens`` puts NaN into every row's IoU token; ``metadata`` is recorded as the store's metadata.
    Returns the rows per object: ``{(image, object): {"tiny": row, "large": row}}`` (one model for the two extras).
    """
    rng = np.random.default_rng(seed)
    # Distinct multiples of 1/256 in [0.2, 0.9] for the tiny model; the large model is better on most objects.
    tiny_ious = rng.choice(np.arange(52, 231), NUM_IMAGES * OBJECTS_PER_IMAGE, replace=False) / 256.0
    truth = {}
    with StoreWriter(root, rows_per_part=40, metadata=metadata or {}) as writer:
        for image in range(NUM_IMAGES):
            image_key = f"img{image:03d}"
            rows = []
            for obj in range(OBJECTS_PER_IMAGE):
                tiny_iou = float(tiny_ious[image * OBJECTS_PER_IMAGE + obj])
                large_iou = float(np.clip(tiny_iou + rng.uniform(-0.05, 0.3), 0.0, 1.0))
                h_prompt_null = obj == 0  # one object in five has no h_prompt
                tiny = synthetic_row(image_key, f"o{obj}", TINY, tiny_iou, rng, large_iou=large_iou,
                                     h_prompt_null=h_prompt_null)  # fmt: skip
                large = synthetic_row(image_key, f"o{obj}", LARGE, large_iou, rng, large_iou=large_iou)
                large["model_gap"] = tiny["model_gap"]
                rows += [tiny, large]
                truth[(image_key, f"o{obj}")] = {"tiny": tiny, "large": large}
            if image == 0:
                rows.append(synthetic_row(image_key, "only_tiny", TINY, 0.5, rng))
                truth[(image_key, "only_tiny")] = {"tiny": rows[-1]}
            if image == 1:
                rows.append(synthetic_row(image_key, "only_large", LARGE, 0.5, rng))
                truth[(image_key, "only_large")] = {"large": rows[-1]}
            if nonfinite_tokens:
                for row in rows:
                    row["iou_token"] = np.full_like(row["iou_token"], np.nan)
            writer.add_image(image_key, rows)
    return truth


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    truth = write_synthetic_store(folder / "store")
    heads = random_heads(HEAD_NAMES, seed=3)
    heads.save(folder / "heads.safetensors")
    results = run_evaluation(
        folder / "store",
        folder / "heads.safetensors",
        folder / "report",
        model="tiny",
        seeds=4,
        ablation=True,
        ablation_hyper_parameters=FAST_TRAINING,
        progress=False,
    ).to_json()
    return {"folder": folder, "truth": truth, "heads": heads, "results": results}


# Output files ----------------------------------------------------------------------------------------------------


def test_writes_report_json_and_plots(evaluation):
    out = evaluation["folder"] / "report"
    expected = {"report.md", "results.json", "correlation.png", "ablation.png"}
    expected |= {f"curves_{scenario.name}.png" for scenario in CORRECTION_SCENARIOS}
    assert expected <= {path.name for path in out.iterdir()}
    for name in expected - {"report.md", "results.json"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(evaluation["results"]["files"]) == expected

    stored = json.loads((out / "results.json").read_text())
    assert stored["model"] == TINY
    assert stored["seeds"] == 4
    assert stored["auc_ranges"] == {"r_0_1": [0.0, 1.0], "r_0_0.5": [0.0, 0.5]}

    report = (out / "report.md").read_text()
    assert "r ∈ [0, 1]" in report
    assert "r ∈ [0, 0.5]" in report
    for scenario in CORRECTION_SCENARIOS:
        assert f"(curves_{scenario.name}.png)" in report
    assert "random weights" in report  # random_heads are flagged as meaningless
    assert "`h_theta`" in report  # the skipped measure is named


def test_plots_are_high_resolution(evaluation):
    from PIL import Image

    with Image.open(evaluation["folder"] / "report" / "curves_prompt_refinement.png") as image:
        assert image.width >= 1500  # 10.5 inches at 200 dpi
        assert image.info["dpi"][0] >= 150


def test_every_scenario_has_every_measure_with_both_auc_ranges(evaluation):
    stored = json.loads((evaluation["folder"] / "report" / "results.json").read_text())
    expected_heads = {
        "model_selection": {"model_gap", "iou_tiny", "iou_large-iou_tiny"},
        "prompt_refinement": {"prompt_gap", "iou_tiny", "iou_dense_prompt-iou_tiny"},
        "task_supervision": {"task_gap", "iou_unsupervised", "iou_tiny-iou_unsupervised"},
        "segmentation_uncertainty": {"iou_tiny"},
    }
    present_entropies = set(ENTROPY_MEASURES) - {"h_theta"}
    for scenario in CORRECTION_SCENARIOS:
        entry = stored["scenarios"][scenario.name]
        assert entry["status"] == "done", scenario.name
        measures = entry["measures"]
        assert set(measures) == expected_heads[scenario.name] | present_entropies | {"sam_score", "random", "oracle"}
        assert set(entry["skipped_measures"]) == {"h_theta"}
        assert "null for every object" in entry["skipped_measures"]["h_theta"]
        for key, measure in measures.items():
            aucs = measure["relative_auc_percent"]
            assert set(aucs) == set(AUC_RANGES), (scenario.name, key)
            assert all(isinstance(value, float) and math.isfinite(value) for value in aucs.values()), (key, aucs)
            assert len(measure["mean_iou"]) == len(stored["fractions"])
        assert measures["oracle"]["relative_auc_percent"] == pytest.approx({"r_0_1": 100.0, "r_0_0.5": 100.0}, abs=1e-9)
        # h_prompt is null for object o0 of every image: scored on the other objects only.
        assert measures["h_prompt"]["num_objects"] == entry["num_objects"] - NUM_IMAGES
        assert measures["h_std"]["num_objects"] == entry["num_objects"]


def test_objects_missing_a_model_row_are_dropped_and_counted(evaluation):
    entry = evaluation["results"]["scenarios"]["model_selection"]
    assert entry["num_objects"] == NUM_IMAGES * OBJECTS_PER_IMAGE
    assert entry["counts"]["objects_without_corrected_row"] == 1
    assert entry["counts"]["objects_without_base_row"] == 1
    paired = [rows for rows in evaluation["truth"].values() if len(rows) == 2]
    assert entry["mean_base_iou"] == pytest.approx(np.mean([rows["tiny"]["iou"] for rows in paired]), abs=1e-6)
    assert entry["mean_corrected_iou"] == pytest.approx(np.mean([rows["large"]["iou"] for rows in paired]), abs=1e-6)
    # The other scenarios use the tiny rows alone, so the object with only a tiny row counts there.
    assert evaluation["results"]["scenarios"]["prompt_refinement"]["num_objects"] == NUM_IMAGES * OBJECTS_PER_IMAGE + 1
    report = (evaluation["folder"] / "report" / "report.md").read_text()
    assert "dropped: 1 without a sam2.1-large row, 1 without a sam2.1-tiny row" in report


def test_a_measure_equal_to_the_true_gain_scores_100(evaluation):
    measures = evaluation["results"]["scenarios"]["segmentation_uncertainty"]["measures"]
    # h_std = 1 - iou is the gain of a perfect correction; SAM's score equals the IoU (lowest corrected first).
    for key in ("h_std", "sam_score"):
        for value in measures[key]["relative_auc_percent"].values():
            assert value == pytest.approx(100.0, abs=1e-9), key
    assert measures["h_std"]["mean_iou"] == pytest.approx(measures["oracle"]["mean_iou"])
    # Random ranking is clearly worse than the oracle here.
    assert measures["random"]["relative_auc_percent"]["r_0_1"] < 90.0


def as_stored(values):
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def expected_relative_aucs(base, corrected, values, higher):
    """Relative AUC per range from usam.metrics alone, bypassing the store and the evaluation module."""
    curve = correction_curve(base, corrected, values, higher_is_uncertain=higher)
    none, oracle = no_correction_curve(base), oracle_curve(base, corrected)
    return {key: relative_auc(curve, none, oracle, max_fraction=limit) for key, limit in AUC_RANGES.items()}


def head_inputs(rows, pairing_offset):
    """IoU token and the mask token of the best output, assembled here independently of the trainer."""
    return torch.from_numpy(
        np.stack(
            [
                np.concatenate(
                    [row["iou_token"], row["mask_tokens"].reshape(4, 256)[np.argmax(row["mask_ious"]) + pairing_offset]]
                )
                for row in rows
            ]
        )
    )


def test_numbers_match_a_direct_computation_from_the_rows(evaluation):
    truth, heads, scenarios = evaluation["truth"], evaluation["heads"], evaluation["results"]["scenarios"]
    paired = [truth[key] for key in sorted(truth) if set(truth[key]) == {"tiny", "large"}]
    tiny = [entry["tiny"] for entry in paired]
    # The store keeps float32; the evaluation computes in float64 from those values.
    base = as_stored([row["iou"] for row in tiny])
    large = as_stored([entry["large"]["iou"] for entry in paired])
    scores = as_stored([row["sam_scores"][np.argmax(row["mask_ious"])] for row in tiny])
    with torch.no_grad():
        predicted = {name: values.double().numpy() for name, values in heads.predict(head_inputs(tiny, 1)).items()}
    selection = scenarios["model_selection"]["measures"]
    checks = {
        "sam_score": (scores, False),
        "iou_tiny": (predicted["iou_tiny"], False),
        "model_gap": (predicted["model_gap"], True),
        "iou_large-iou_tiny": (predicted["iou_large"] - predicted["iou_tiny"], True),
        "h_all": (as_stored([row["h_all"] for row in tiny]), True),
    }
    for key, (values, higher) in checks.items():
        expected = expected_relative_aucs(base, large, values, higher)
        for range_key, value in expected.items():
            assert selection[key]["relative_auc_percent"][range_key] == pytest.approx(value, abs=1e-6), key

    # Task supervision ranks by the score and entropies of SAM's pick, on every tiny row (the tiny-only one too).
    all_tiny = [truth[key]["tiny"] for key in sorted(truth) if "tiny" in truth[key]]
    base = as_stored([row["unsupervised_iou"] for row in all_tiny])
    best = as_stored([row["iou"] for row in all_tiny])
    task = scenarios["task_supervision"]["measures"]
    pick_scores = as_stored([row["sam_scores"].max() for row in all_tiny])
    pick_entropy = as_stored([row["h_std_sam_pick"] for row in all_tiny])
    for key, values, higher in (("sam_score", pick_scores, False), ("h_std", pick_entropy, True)):
        expected = expected_relative_aucs(base, best, values, higher)
        assert task[key]["relative_auc_percent"] == pytest.approx(expected, abs=1e-6), key
    assert task["h_std"]["source"] == "column h_std_sam_pick"
    assert task["h_task"]["source"] == "column h_task"


def test_heads_read_the_mask_token_of_their_pairing(evaluation, tmp_path):
    folder, truth = evaluation["folder"], evaluation["truth"]
    heads = random_heads(["iou_tiny"], seed=7, pairing="as-released")
    heads.save(tmp_path / "released.st")
    results = run_evaluation(folder / "store", tmp_path / "released.st", tmp_path / "out", seeds=1, ablation=False,
                             progress=False).to_json()  # fmt: skip
    rows = [truth[key]["tiny"] for key in sorted(truth) if "tiny" in truth[key]]
    base = as_stored([row["iou"] for row in rows])
    for offset, should_match in ((0, True), (1, False)):
        with torch.no_grad():
            predicted = heads.predict(head_inputs(rows, offset))["iou_tiny"].double().numpy()
        expected = expected_relative_aucs(base, np.ones_like(base), predicted, False)
        measured = results["scenarios"]["segmentation_uncertainty"]["measures"]["iou_tiny"]["relative_auc_percent"]
        assert (measured == pytest.approx(expected, abs=1e-6)) is should_match, offset


def test_correlation_matrix(evaluation):
    correlation = evaluation["results"]["correlation"]
    names = correlation["names"]
    expected = ["true_iou", "sam_score", "h_std", "h_all", "h_task", "h_prompt", "h_augmentation"]
    expected += ["true_model_gap", "true_prompt_gap", "true_task_gap"] + [f"head_{name}" for name in HEAD_NAMES]
    assert names == expected
    assert correlation["left_out"] == {"h_theta": "null for every row"}
    matrix = np.array(correlation["matrix"], dtype=float)
    assert matrix.shape == (len(names), len(names))
    np.testing.assert_allclose(matrix, matrix.T)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    # h_std = 1 - IoU and SAM's score = IoU, by construction.
    assert matrix[names.index("true_iou"), names.index("h_std")] == pytest.approx(-1.0)
    assert matrix[names.index("true_iou"), names.index("sam_score")] == pytest.approx(1.0)
    # Rows without h_prompt (one in five of the tiny objects) are dropped; the tiny-only object lacks model_gap.
    assert correlation["num_rows"] == NUM_IMAGES * (OBJECTS_PER_IMAGE - 1)
    assert correlation["rows_with_nulls_dropped"] == NUM_IMAGES + 1
    report = (evaluation["folder"] / "report" / "report.md").read_text()
    assert "| **True IoU** |" in report


def test_token_ablation(evaluation):
    ablation = evaluation["results"]["ablation"]
    assert ablation["status"] == "done"
    protocol = ablation["protocol"]
    assert protocol["images"] == NUM_IMAGES
    assert protocol["test_images"] == round(0.3 * NUM_IMAGES)
    assert protocol["train_images"] + protocol["test_images"] == NUM_IMAGES
    assert protocol["hyper_parameters"]["model_gap"] == FAST_TRAINING.to_dict()
    assert set(ablation["variants"]) == set(ABLATION_VARIANTS)
    assert ablation["variants"]["mask_token"]["inputs"] == ["mask_token"]
    trained = set(ablation["variants"]["both"]["training"])
    assert trained == {"iou_tiny", "model_gap", "prompt_gap", "task_gap"}
    # model_gap learns from the tiny rows of the training images only; the others from the same rows.
    training_rows = ablation["variants"]["both"]["training"]["model_gap"]
    assert training_rows["train_rows"] + training_rows["validation_rows"] < NUM_IMAGES * OBJECTS_PER_IMAGE
    for name, entry in ablation["scenarios"].items():
        assert entry["status"] == "done", name
        assert entry["num_test_objects"] < evaluation["results"]["scenarios"][name]["num_objects"]
        assert set(entry["scores"]) == {*ABLATION_VARIANTS, "provided_heads", "sam_score", "random"}
        for score in entry["scores"].values():
            assert set(score["relative_auc_percent"]) == set(AUC_RANGES)
            assert all(math.isfinite(value) for value in score["relative_auc_percent"].values())
    # On the test objects SAM's score still equals the oracle's order for segmentation uncertainty.
    segmentation = ablation["scenarios"]["segmentation_uncertainty"]["scores"]["sam_score"]
    assert segmentation["relative_auc_percent"]["r_0_1"] == pytest.approx(100.0)
    report = (evaluation["folder"] / "report" / "report.md").read_text()
    assert "| IoU token only | Mask token only | Both tokens |" in report


# Arguments and other configurations ------------------------------------------------------------------------------


def test_without_ablation_results_are_reproducible(evaluation, tmp_path):
    folder = evaluation["folder"]
    first = run_evaluation(folder / "store", folder / "heads.safetensors", tmp_path / "a", seeds=4, ablation=False,
                           progress=False).to_json()  # fmt: skip
    assert first["ablation"] is None
    assert not (tmp_path / "a" / "ablation.png").exists()
    assert "Not run" in (tmp_path / "a" / "report.md").read_text()
    assert first["scenarios"] == evaluation["results"]["scenarios"]
    second = run_evaluation(folder / "store", folder / "heads.safetensors", tmp_path / "b", seeds=4, ablation=False,
                            progress=False).to_json()  # fmt: skip
    assert (tmp_path / "a" / "results.json").read_text().replace("/a/", "/b/") == (
        tmp_path / "b" / "results.json"
    ).read_text().replace("/a/", "/b/")
    assert second["correlation"] == first["correlation"]


def test_large_model_and_heads_missing_some_names(evaluation, tmp_path):
    folder = evaluation["folder"]
    random_heads(["iou_large", "model_gap", "task_gap"], seed=1, pairing="as-released").save(tmp_path / "few.st")
    results = run_evaluation(folder / "store", tmp_path / "few.st", tmp_path / "out", model="sam2.1-large",
                             seeds=2, ablation=False, progress=False).to_json()  # fmt: skip
    assert results["model"] == LARGE
    # Model selection still goes tiny -> large; its measures come from the tiny rows.
    selection = results["scenarios"]["model_selection"]
    assert selection["base"]["model"] == TINY
    assert "model_gap" in selection["measures"]
    assert "iou_tiny" in selection["skipped_measures"]
    assert "not in the heads file" in selection["skipped_measures"]["iou_tiny"]
    segmentation = results["scenarios"]["segmentation_uncertainty"]
    assert segmentation["num_objects"] == NUM_IMAGES * OBJECTS_PER_IMAGE + 1
    assert "iou_large" in segmentation["measures"]
    assert "prompt_gap" in results["scenarios"]["prompt_refinement"]["skipped_measures"]


def test_heads_trained_on_the_evaluated_store_are_flagged(evaluation, tmp_path):
    folder = evaluation["folder"]
    heads = random_heads(["iou_tiny"], seed=2)
    heads.metadata.training = {"data": {"store": str(folder / "store")}}
    heads.save(tmp_path / "own.st")
    results = run_evaluation(folder / "store", tmp_path / "own.st", tmp_path / "out", seeds=1, ablation=False,
                             progress=False).to_json()  # fmt: skip
    assert any("trained on this store" in note for note in results["warnings"])
    assert "## Warnings" in (tmp_path / "out" / "report.md").read_text()
    assert not any("trained on this store" in note for note in evaluation["results"]["warnings"])


def test_invalid_arguments(evaluation, tmp_path):
    folder = evaluation["folder"]
    store, heads = folder / "store", folder / "heads.safetensors"
    with pytest.raises(InvalidInputError, match="no rows of a 'small' model"):
        run_evaluation(store, heads, tmp_path / "x", model="small", ablation=False, progress=False)
    with pytest.raises(InvalidInputError, match="unknown model"):
        run_evaluation(store, heads, tmp_path / "x", model="medium", ablation=False, progress=False)
    with pytest.raises(InvalidInputError, match="seeds"):
        run_evaluation(store, heads, tmp_path / "x", seeds=0, ablation=False, progress=False)
    with pytest.raises(InvalidInputError, match="ablation_hyper_parameters"):
        run_evaluation(store, heads, tmp_path / "x", ablation_hyper_parameters={"lr": 0.1}, progress=False)
    with pytest.raises(InvalidInputError, match="no entry for head"):
        run_evaluation(store, heads, tmp_path / "x", ablation_hyper_parameters={"model_gap": FAST_TRAINING},
                       progress=False).to_json()  # fmt: skip
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidInputError, match="is a file"):
        run_evaluation(store, heads, tmp_path / "file", ablation=False, progress=False)


# Fixes: causes of skipped measures, stale plots, off-distribution measures, presets, help ---------------------------


def test_nonfinite_tokens_are_named_as_the_cause_of_skipped_heads(tmp_path):
    write_synthetic_store(tmp_path / "store", nonfinite_tokens=True, metadata={"monte_carlo": False})
    random_heads(HEAD_NAMES, seed=3).save(tmp_path / "heads.st")
    run_evaluation(tmp_path / "store", tmp_path / "heads.st", tmp_path / "out", seeds=1, ablation=False,
                   progress=False)  # fmt: skip
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    segmentation = stored["scenarios"]["segmentation_uncertainty"]
    # Every head is skipped, and the reason is the tokens, not the Monte Carlo part of the extraction.
    assert "iou_tiny" in segmentation["skipped_measures"]
    for scenario in stored["scenarios"].values():
        for key in ("model_gap", "prompt_gap", "task_gap", "iou_tiny"):
            reason = scenario["skipped_measures"].get(key)
            if reason is not None:
                assert "non-finite tokens" in reason, (key, reason)
                assert "Monte Carlo" not in reason, (key, reason)
    # An entropy the extraction left out names that cause instead, and a head not in the heads file its own.
    assert "--no-monte-carlo" in segmentation["skipped_measures"]["h_theta"]
    assert "h_std" in segmentation["measures"]
    random_heads(["iou_tiny"], seed=3).save(tmp_path / "one.st")
    run_evaluation(tmp_path / "store", tmp_path / "one.st", tmp_path / "one", seeds=1, ablation=False, progress=False)
    stored = json.loads((tmp_path / "one" / "results.json").read_text())
    assert "not in the heads file" in stored["scenarios"]["model_selection"]["skipped_measures"]["model_gap"]


def test_plots_of_an_earlier_run_are_removed_and_nothing_else(evaluation, tmp_path):
    folder = evaluation["folder"]
    out = tmp_path / "report"
    out.mkdir()
    (out / "ablation.png").write_bytes(b"from an earlier run")
    (out / "curves_mine.png").write_bytes(b"the user's")
    (out / "notes.txt").write_text("the user's")
    (tmp_path / "outside.png").write_bytes(b"the user's")
    # An earlier evaluation listed its files; names outside the folder or not usam's plots are never removed.
    earlier = ["report.md", "results.json", "ablation.png", "../outside.png", "notes.txt", "curves_gone.png"]
    (out / "results.json").write_text(json.dumps({"files": earlier}))
    run_evaluation(folder / "store", folder / "heads.safetensors", out, seeds=1, ablation=False, progress=False)
    assert not (out / "ablation.png").exists()
    assert (out / "curves_mine.png").exists()
    assert (out / "notes.txt").exists()
    assert (tmp_path / "outside.png").exists()
    names = {path.name for path in out.iterdir()}
    assert names == set(json.loads((out / "results.json").read_text())["files"]) | {"curves_mine.png", "notes.txt"}
    assert "ablation.png" not in (out / "report.md").read_text()


def test_the_large_minus_tiny_measure_is_flagged_unless_size_heads_were_pooled(evaluation, tmp_path):
    folder = evaluation["folder"]
    notes = {}
    for kind, training in (("own-size", {}), ("pooled", {"data": {SIZE_TARGETS_KEY: SizeTargets.POOLED.value}})):
        heads = random_heads(HEAD_NAMES, seed=3)
        heads.metadata.training = training
        heads.save(tmp_path / f"{kind}.st")
        run_evaluation(folder / "store", tmp_path / f"{kind}.st", tmp_path / kind, seeds=1, ablation=False,
                       progress=False)  # fmt: skip
        stored = json.loads((tmp_path / kind / "results.json").read_text())
        measures = stored["scenarios"]["model_selection"]["measures"]
        notes[kind] = (measures["iou_large-iou_tiny"].get("note"), (tmp_path / kind / "report.md").read_text())
        # Heads that read their own size's rows are never flagged.
        assert measures["iou_tiny"].get("note") is None
        assert stored["scenarios"]["prompt_refinement"]["measures"]["iou_dense_prompt-iou_tiny"].get("note") is None
    note, report = notes["own-size"]
    assert note is not None
    assert "off-distribution" in note
    assert "iou_large" in note
    assert note in report
    note, report = notes["pooled"]
    assert note is None
    assert "off-distribution" not in report


def test_preset_paper_evaluates_the_large_model_and_an_explicit_model_wins(evaluation, tmp_path, capsys):
    folder = evaluation["folder"]
    base = ["evaluate", "--data", str(folder / "store"), "--heads", str(folder / "heads.safetensors"),
            "--no-ablation", "--no-progress", "--seeds", "1"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "paper"), "--preset", "paper"]) == 0, capsys.readouterr().err
    stored = json.loads((tmp_path / "paper" / "results.json").read_text())
    assert stored["model"] == LARGE
    assert stored["preset"] == "paper"
    assert main([*base, "--out", str(tmp_path / "tiny"), "--preset", "paper", "--model", "tiny"]) == 0
    assert json.loads((tmp_path / "tiny" / "results.json").read_text())["model"] == TINY
    # Random heads are flagged on stderr as a usam warning, once.
    err = capsys.readouterr().err
    assert err.count("usam: warning: The heads in") == 2


def test_report_lists_the_differences_from_the_paper(evaluation, tmp_path):
    from usam.presets import PAPER_DEPARTURES

    folder = evaluation["folder"]
    metadata = {"tie_rule": "last", "extraction_precision": "bfloat16", "preset": "usam", "dataset": "coco"}
    write_synthetic_store(tmp_path / "store", metadata=metadata)
    result = run_evaluation(tmp_path / "store", folder / "heads.safetensors", tmp_path / "out", model="large",
                            seeds=1, ablation=False, progress=False)  # fmt: skip
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Differences from the paper" in report
    for departure in PAPER_DEPARTURES:
        assert f"| {departure.topic} | {departure.paper} |" in report
    rows = {row["topic"]: row for row in result.to_json()["differences_from_paper"]}
    assert rows["ties between equally good masks"]["differs"] is False  # the store records the paper's rule
    assert rows["extraction precision on a GPU"]["differs"] is True
    assert rows["model of the correlation table"]["differs"] is False  # large, as the paper
    assert rows["SAM2 version of the data"]["differs"] is True  # sam2.1 rows
    assert rows["DAVIS frames"]["this_run"].startswith("not applicable")
    assert "preset `usam`" in report
    assert "tie rule `last`" in report
    # A store without recorded choices degrades to "not recorded" and says so.
    bare = {row["topic"]: row for row in evaluation["results"]["differences_from_paper"]}
    assert bare["ties between equally good masks"]["this_run"] == "not recorded"
    assert bare["ties between equally good masks"]["differs"] is None
    assert bare["model of the correlation table"]["differs"] is True  # tiny


def test_evaluate_help_shows_the_preset(capsys):
    assert main(["evaluate", "--help"]) == 0
    assert "--preset {usam,paper}" in capsys.readouterr().out


def test_typed_results_and_plots_on_given_axes(evaluation, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from usam.evaluation import MeasureKind, Status, plot_ablation, plot_correlation, plot_scenario

    folder = evaluation["folder"]
    result = run_evaluation(folder / "store", folder / "heads.safetensors", tmp_path / "out", seeds=4,
                            ablation=False, progress=False)  # fmt: skip
    segmentation = result.scenarios["segmentation_uncertainty"]
    assert segmentation.status is Status.DONE
    assert segmentation.measures["iou_tiny"].kind is MeasureKind.USAM_HEAD
    assert segmentation.measures["h_std"].relative_auc_percent == pytest.approx(
        evaluation["results"]["scenarios"]["segmentation_uncertainty"]["measures"]["h_std"]["relative_auc_percent"]
    )
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert stored == result.to_json()
    # Plots draw on the caller's axes, so that panels can be combined into one figure.
    figure, axes = plt.subplots(1, 3)
    assert plot_scenario(axes[0], segmentation) is figure
    assert len(axes[0].get_lines()) == len(segmentation.measures) + 2  # and no correction, the r = 0.5 mark
    assert plot_correlation(axes[1], result.correlation) is figure
    assert len(axes[1].texts) == len(result.correlation.names) ** 2
    plt.close(figure)
    ablation = run_evaluation(folder / "store", folder / "heads.safetensors", tmp_path / "ab", seeds=1,
                              ablation_hyper_parameters=FAST_TRAINING, progress=False).ablation  # fmt: skip
    figure, ax = plt.subplots()
    assert plot_ablation(ax, ablation, "r_0_0.5") is figure
    assert ax.get_title() == "Relative AUC, r ∈ [0, 0.5]"
    plt.close(figure)


def test_every_departure_from_the_paper_is_judged_for_a_run():
    from usam.evaluation.departures import known_keys
    from usam.presets import PAPER_DEPARTURES

    assert known_keys() == {departure.key for departure in PAPER_DEPARTURES}


def test_relative_aucs_of_rankings_equal_ranking_scores_one_by_one():
    """Sharing the references between rankings changes nothing, also for rankings with NaN values or ties."""
    from usam.evaluation.scenarios import ranking_scores, relative_aucs_of_rankings

    rng = np.random.default_rng(5)
    base, corrected = rng.random(80), rng.random(80)
    partly_defined = rng.random(80)
    partly_defined[::7] = np.nan
    rankings = [
        (rng.random(80), True),
        (partly_defined, False),
        (np.round(rng.random(80), 1), True),  # ties
        (corrected - base, True),  # the oracle's own order
    ]
    fractions = np.linspace(0.0, 1.0, 21)
    together = relative_aucs_of_rankings(base, corrected, rankings, fractions)
    for row, (values, higher) in zip(together, rankings, strict=True):
        # The reference, one ranking at a time with usam.metrics' own curves and relative AUC.
        defined = ~np.isnan(values)
        b, c, v = base[defined], corrected[defined], values[defined]
        curve = correction_curve(b, c, v, fractions=fractions, higher_is_uncertain=higher)
        none, oracle = no_correction_curve(b, fractions=fractions), oracle_curve(b, c, fractions=fractions)
        expected = [relative_auc(curve, none, oracle, max_fraction=limit) for limit in AUC_RANGES.values()]
        np.testing.assert_allclose(row, expected, rtol=0, atol=1e-9)
        _, aucs, _ = ranking_scores(base, corrected, values, higher, fractions)
        np.testing.assert_allclose([aucs[key] for key in AUC_RANGES], expected, rtol=0, atol=1e-9)
    assert together[3] == pytest.approx([100.0, 100.0])
