"""Tests for usam.training on token stores: reading rows and targets, pairing, pooled sizes, train_from_store, HPO."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from usam.cli import main
from usam.errors import InvalidInputError, StoreError
from usam.head_table import GAP_HEAD_NAMES, SIZE_TARGETS_KEY, SizeTargets, size_targets_of
from usam.heads import load_heads
from usam.store import StoreWriter, row_schema
from usam.training import (
    HPO_SEARCH_SPACE,
    PAPER_DEFAULTS,
    TrainingWarning,
    best_mask_token,
    load_training_data,
    train_from_store,
    tune_hyper_parameters,
)

TOKEN = 256


# Store data --------------------------------------------------------------------------------------------------


def store_columns(specs):
    """A minimal token-store table. Each spec: image, object, model, best mask index, and optional targets.

    Tokens encode where they come from: iou_token = 1000 * row; mask token j = 1000 * row + 10 * (j + 1), so a
    feature row tells which row and which mask token it was built from.
    """
    columns = {
        name: []
        for name in (
            "dataset",
            "image_key",
            "object_id",
            "model",
            "iou_token",
            "mask_tokens",
            "mask_ious",
            "iou",
            "unsupervised_iou",
            "iou_dense_prompt",
            *GAP_HEAD_NAMES,
        )
    }
    for row, spec in enumerate(specs):
        image, obj, model, best = spec[:4]
        targets = spec[4] if len(spec) > 4 else {}
        ious = np.full(3, 0.2, np.float32)
        ious[best] = 0.9
        columns["dataset"].append("coco")
        columns["image_key"].append(image)
        columns["object_id"].append(obj)
        columns["model"].append(model)
        columns["iou_token"].append(np.full(TOKEN, 1000.0 * row, np.float32))
        columns["mask_tokens"].append(np.repeat(1000.0 * row + 10.0 * np.arange(1, 5), TOKEN).astype(np.float32))
        columns["mask_ious"].append(ious)
        columns["iou"].append(targets.get("iou", 0.9))
        columns["unsupervised_iou"].append(targets.get("unsupervised_iou", 0.5))
        columns["iou_dense_prompt"].append(targets.get("iou_dense_prompt", 0.7))
        for gap in GAP_HEAD_NAMES:
            columns[gap].append(targets.get(gap, 0.1))
    return columns


def store_table(specs, token_type=None):
    token_type = token_type or pa.float32()
    columns = store_columns(specs)
    arrays = {}
    for name, values in columns.items():
        if name in ("iou_token", "mask_tokens", "mask_ious"):
            flat = np.concatenate(values)
            value_type = pa.float32() if name == "mask_ious" else token_type
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=value_type), len(values[0]))
        elif name in ("dataset", "image_key", "object_id", "model"):
            arrays[name] = pa.array(values, type=pa.string())
        else:
            arrays[name] = pa.array(values, type=pa.float32())
    return pa.table(arrays)


def row_of(data, feature_row):
    return round(float(data.features[feature_row, 0]) / 1000.0) if data.inputs[0] == "iou_token" else None


def test_pairing_picks_the_token_of_the_best_mask():
    specs = [("img0", f"obj{best}", "sam2.1-tiny", best) for best in (0, 1, 2)]
    table = store_table(specs)
    for pairing, offset in (("true", 1), ("as-released", 0)):
        data = load_training_data(table, ["iou_tiny"], pairing=pairing)
        assert data.pairing == pairing
        rows = data.heads["iou_tiny"].rows
        for feature_row in rows:
            source_row = row_of(data, feature_row)
            best = specs[source_row][3]
            token = best + offset  # mask token index 0..3
            np.testing.assert_array_equal(data.features[feature_row, :TOKEN], 1000.0 * source_row)
            np.testing.assert_array_equal(data.features[feature_row, TOKEN:], 1000.0 * source_row + 10.0 * (token + 1))
    np.testing.assert_array_equal(best_mask_token(np.array([[0.1, np.nan, 0.3], [0.5, 0.2, 0.1]]), "true"), [3, 1])

    only_mask = load_training_data(table, ["iou_tiny"], pairing="as-released", inputs=["mask_token"])
    assert only_mask.features.shape == (3, TOKEN)
    assert sorted(only_mask.features[:, 0] % 1000) == [10.0, 20.0, 30.0]  # tokens 0, 1, 2 for best 0, 1, 2
    only_iou = load_training_data(table, ["iou_tiny"], inputs=["iou_token"])
    assert only_iou.features.shape == (3, TOKEN)
    assert only_iou.inputs == ("iou_token",)


def test_targets_gap_clipping_nulls_and_rows_per_size():
    specs = [
        ("img0", "a", "sam2.1-tiny", 0, {"iou": 0.8, "model_gap": 0.7, "task_gap": None}),
        ("img0", "a", "sam2.1-large", 0, {"iou": 0.6, "model_gap": -0.7, "task_gap": 0.2}),
        ("img1", "b", "sam2.1-tiny", 1, {"iou": 0.4, "model_gap": 0.1, "task_gap": -0.1, "unsupervised_iou": None}),
        ("img1", "b", "sam2.1-base-plus", 2, {"iou": 0.3, "model_gap": 0.0, "task_gap": None}),
    ]
    table = store_table(specs)
    data = load_training_data(
        table, ["iou_tiny", "iou_large", "iou_base_plus", "iou_unsupervised", "model_gap", "task_gap"]
    )

    def source_rows(name):
        return [row_of(data, row) for row in data.heads[name].rows]

    # Rows come sorted by (dataset, image, object, model): "sam2.1-large" sorts before "sam2.1-tiny".
    assert source_rows("iou_tiny") == [0, 2]
    assert source_rows("iou_large") == [1]
    assert source_rows("iou_base_plus") == [3]
    np.testing.assert_allclose(data.heads["iou_tiny"].targets, [0.8, 0.4])
    assert source_rows("model_gap") == [1, 0, 3, 2]
    np.testing.assert_allclose(data.heads["model_gap"].targets, [0.0, 1.0, 0.5, 0.6])  # clip(gap + 0.5, 0, 1)
    assert source_rows("task_gap") == [1, 2]  # null targets dropped
    np.testing.assert_allclose(data.heads["task_gap"].targets, [0.7, 0.4])
    assert source_rows("iou_unsupervised") == [1, 0, 3]
    assert data.source["rows"]["task_gap"] == 2
    assert data.sam2_version == "sam2.1"
    assert list(data.image_keys) == ["coco/img0", "coco/img1"]

    pooled = load_training_data(table, ["iou_tiny", "iou_large"], pool_sizes=True)
    # Pooled: every model's rows, each with the IoU of that size's model on the same object; object b has no
    # large row, so its rows have no iou_large target.
    assert [row_of(pooled, row) for row in pooled.heads["iou_large"].rows] == [1, 0]
    np.testing.assert_allclose(pooled.heads["iou_large"].targets, [0.6, 0.6])
    assert [row_of(pooled, row) for row in pooled.heads["iou_tiny"].rows] == [1, 0, 3, 2]
    np.testing.assert_allclose(pooled.heads["iou_tiny"].targets, [0.8, 0.8, 0.4, 0.4])
    assert pooled.source["pool_sizes"] is True
    assert pooled.source["rows_without_size_target"] == {"iou_tiny": 0, "iou_large": 2}
    assert pooled.source["size_target_models"] == {"iou_tiny": "sam2.1-tiny", "iou_large": "sam2.1-large"}

    chosen = load_training_data(table, ["iou_tiny", "model_gap"], models=["sam2.1-tiny"])
    assert [row_of(chosen, row) for row in chosen.heads["model_gap"].rows] == [0, 2]
    assert chosen.source["models"] == ["sam2.1-tiny"]

    by_default = load_training_data(table)  # every head with rows; no small model in the table
    assert "iou_small" not in by_default.heads
    assert by_default.source["skipped_heads"] == ["iou_small"]

    with pytest.raises(InvalidInputError, match="iou_small"):
        load_training_data(table, ["iou_small"])
    with pytest.raises(InvalidInputError, match="not in"):
        load_training_data(table, ["iou_tiny"], models=["sam2.1-huge"])
    with pytest.raises(InvalidInputError, match="unknown head"):
        load_training_data(table, ["iou_medium"])
    with pytest.raises(InvalidInputError, match="pairing"):
        load_training_data(table, ["iou_tiny"], pairing="shifted")
    with pytest.raises(StoreError, match="mask_tokens"):
        load_training_data(table.drop_columns(["mask_tokens"]), ["iou_tiny"])


def test_float16_tokens_are_read_as_float32():
    table = store_table([("img0", "a", "sam2.1-tiny", 1)], token_type=pa.float16())
    data = load_training_data(table, ["iou_tiny"])
    assert data.features.dtype == np.float32
    assert data.features[0, TOKEN] == 30.0


def store_row(image, obj, model, rng, dataset="coco"):
    values = {"image_key": image, "object_id": obj, "model": model, "dataset": dataset, "split": "train"}
    row = {}
    for field in row_schema():
        if pa.types.is_string(field.type):
            row[field.name] = values[field.name]
        elif pa.types.is_integer(field.type):
            row[field.name] = 100
        elif pa.types.is_fixed_size_list(field.type):
            row[field.name] = rng.standard_normal(field.type.list_size).astype(np.float32)
        else:
            row[field.name] = float(rng.random()) - (0.5 if field.name.endswith("_gap") else 0.0)
    # Targets that depend on the tokens, so that something can be learned.
    row["iou"] = float(1 / (1 + np.exp(-row["iou_token"][:8].sum())))
    return row


@pytest.fixture(scope="module")
def token_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store") / "tokens"
    rng = np.random.default_rng(0)
    with StoreWriter(root, rows_per_part=16) as writer:
        for image in range(30):
            rows = [
                store_row(f"img{image:03d}", f"obj{obj}", model, rng)
                for obj in range(2)
                for model in ("sam2.1-tiny", "sam2.1-large")
            ]
            writer.add_image(f"img{image:03d}", rows)
    return root


def test_train_from_store_writes_heads_that_load_with_their_metadata(token_store, tmp_path):
    out = train_from_store(
        token_store,
        tmp_path / "heads.safetensors",
        heads=["iou_tiny", "iou_large", "task_gap"],
        pairing="as-released",
        dataset_defaults="sa-v",
        seed=5,
        progress=False,
    )
    heads = load_heads(out)
    assert heads.names == ["iou_tiny", "iou_large", "task_gap"]
    assert heads.metadata.pairing == "as-released"
    assert heads.metadata.sam2_version == "sam2.1"
    training = heads.metadata.training
    assert training["data"]["store"] == str(token_store)
    assert training["data"]["rows"] == {"iou_tiny": 60, "iou_large": 60, "task_gap": 120}
    assert training["data"]["models"] == ["sam2.1-large", "sam2.1-tiny"]
    assert training["data"]["pool_sizes"] is False
    assert training["seed"] == 5
    assert training["validation_fraction"] == 0.1
    assert training["validation_images"] == 3
    assert training["hyper_parameter_source"] == {"method": "paper defaults", "dataset": "sa-v", "chosen_by": "given"}
    assert (training["preset"], training["pool_sizes"], training["tie_rule"]) == ("usam", False, "first")
    for name in heads.names:
        entry = training["heads"][name]
        assert entry["hyper_parameters"]["epochs"] == 9
        assert entry["best_epoch"] in range(1, 10)
        assert set(entry["validation"]) == {"mse", "mae", "r2", "pearson", "num_rows"}


def test_given_hyper_parameters_replace_the_recipe_for_every_head(token_store, tmp_path):
    from usam.training import USAM_HYPER_PARAMETERS

    schedule = dataclasses.replace(USAM_HYPER_PARAMETERS, epochs=3, lr=3e-3, batch_size=16)
    out = train_from_store(
        token_store, tmp_path / "heads.safetensors", heads=["iou_tiny", "task_gap"], hyper_parameters=schedule,
        progress=False,
    )  # fmt: skip
    training = load_heads(out).metadata.training
    assert training["recipe"] == "given"
    assert training["hyper_parameter_source"] == {"method": "given", "values": schedule.to_dict()}
    for name in ("iou_tiny", "task_gap"):
        entry = training["heads"][name]
        assert entry["hyper_parameters"] == schedule.to_dict()
        assert len(entry["validation_mse_per_epoch"]) <= 3
    with pytest.raises(InvalidInputError, match="either them or dataset_defaults"):
        train_from_store(token_store, tmp_path / "b.safetensors", hyper_parameters=schedule, dataset_defaults="coco")
    with pytest.raises(InvalidInputError, match="either them or a recipe"):
        train_from_store(token_store, tmp_path / "b.safetensors", hyper_parameters=schedule, recipe="usam")
    with pytest.raises(InvalidInputError, match=r"must be a usam\.training\.HyperParameters"):
        train_from_store(token_store, tmp_path / "b.safetensors", hyper_parameters={"lr": 1e-3})
    assert not (tmp_path / "b.safetensors").exists()


def test_memory_mapped_features_equal_in_memory_ones(token_store, tmp_path):
    in_memory = load_training_data(token_store, ["iou_tiny", "model_gap"])
    mapped = load_training_data(token_store, ["iou_tiny", "model_gap"], cache_dir=tmp_path / "cache")
    assert isinstance(mapped.features, np.memmap)
    np.testing.assert_array_equal(mapped.features, in_memory.features)
    for name in in_memory.heads:
        np.testing.assert_array_equal(mapped.head_features(name), in_memory.head_features(name))
        np.testing.assert_array_equal(mapped.heads[name].targets, in_memory.heads[name].targets)
    assert not list((tmp_path / "cache").iterdir()), "the cache file should be gone once mapped"


def test_hpo_records_the_chosen_values(token_store, tmp_path):
    out = train_from_store(
        token_store, tmp_path / "tuned.safetensors", heads=["iou_tiny"], hpo_trials=2, seed=1, progress=False
    )
    training = load_heads(out).metadata.training
    source = training["hyper_parameter_source"]
    assert source["method"] == "optuna TPESampler"
    assert source["trials_per_head"] == 2
    chosen = source["chosen"]["iou_tiny"]
    assert chosen == training["heads"]["iou_tiny"]["hyper_parameters"]
    low, high = HPO_SEARCH_SPACE["lr"]
    assert low <= chosen["lr"] <= high
    assert HPO_SEARCH_SPACE["epochs"][0] <= chosen["epochs"] <= HPO_SEARCH_SPACE["epochs"][1]
    assert HPO_SEARCH_SPACE["batch_size"][0] <= chosen["batch_size"] <= HPO_SEARCH_SPACE["batch_size"][1]

    data = load_training_data(token_store, ["iou_tiny"])
    assert tune_hyper_parameters(data, "iou_tiny", 2, seed=1).to_dict() == chosen  # seeded: the same choice


# Fixes: pooled size targets, non-finite rows, tie rule, HPO streams, dataset defaults, presets ---------------------


def test_pooled_size_heads_learn_the_iou_of_that_sizes_model_on_the_same_object():
    ious = {"tiny": [0.1, 0.2, 0.3], "large": [0.7, 0.8, 0.9, 0.5]}
    specs = [
        (f"img{index}", "o", f"sam2.1-{size}", 0, {"iou": ious[size][index]})
        for index in range(3)
        for size in ("tiny", "large")
    ]
    specs.append(("img3", "lonely", "sam2.1-large", 0, {"iou": ious["large"][3]}))  # no tiny row of this object
    table = store_table(specs)

    pooled = load_training_data(table, ["iou_tiny", "iou_large"], pool_sizes=True)
    for name, size in (("iou_tiny", "tiny"), ("iou_large", "large")):
        head = pooled.heads[name]
        for feature_row, target in zip(head.rows, head.targets, strict=True):
            image, _, model = specs[row_of(pooled, feature_row)][:3]
            # Every row of the object, whichever model's tokens it holds, learns this size's IoU of the object.
            assert target == pytest.approx(ious[size][int(image[3:])]), (name, model)
        models = {specs[row_of(pooled, row)][2] for row in head.rows}
        assert models == {"sam2.1-tiny", "sam2.1-large"}
    assert pooled.heads["iou_tiny"].rows.size == 6  # the lonely large row has no tiny IoU: dropped, counted
    assert pooled.source["rows_without_size_target"] == {"iou_tiny": 1, "iou_large": 0}
    assert pooled.source[SIZE_TARGETS_KEY] == SizeTargets.POOLED

    own = load_training_data(table, ["iou_tiny", "iou_large"])
    assert {specs[row_of(own, row)][2] for row in own.heads["iou_tiny"].rows} == {"sam2.1-tiny"}
    np.testing.assert_allclose(own.heads["iou_tiny"].targets, ious["tiny"])
    assert own.source[SIZE_TARGETS_KEY] == SizeTargets.OWN_ROWS

    two_tiny = store_table([*specs, ("img0", "o", "sam2-tiny", 0)])
    with pytest.raises(InvalidInputError, match=r"pooled iou_tiny .*sam2-tiny.*sam2.1-tiny"):
        load_training_data(two_tiny, ["iou_tiny"], pool_sizes=True)


def test_non_finite_targets_and_tokens_are_dropped_and_counted_but_null_gaps_are_not():
    specs = [
        ("img0", "a", "sam2.1-tiny", 0, {"iou": float("nan")}),
        ("img0", "b", "sam2.1-tiny", 0, {"task_gap": float("inf")}),
        ("img1", "a", "sam2.1-tiny", 0, {"model_gap": None}),  # null by design: no large model for this row
        ("img1", "b", "sam2.1-tiny", 0),
        ("img2", "a", "sam2.1-tiny", 0),
    ]
    table = store_table(specs)
    tokens = table.column("iou_token").combine_chunks().flatten().to_numpy().copy()
    tokens[4 * TOKEN + 3] = np.nan
    bad_tokens = pa.FixedSizeListArray.from_arrays(pa.array(tokens, type=pa.float32()), TOKEN)
    table = table.set_column(table.schema.get_field_index("iou_token"), "iou_token", bad_tokens)

    with pytest.warns(TrainingWarning, match=r"iou_tiny: 1 in iou, 1 in tokens; model_gap: 1 in tokens") as caught:
        data = load_training_data(table, ["iou_tiny", "model_gap", "task_gap"])
    assert len(caught) == 1
    assert [row_of(data, row) for row in data.heads["iou_tiny"].rows] == [1, 2, 3]
    assert [row_of(data, row) for row in data.heads["model_gap"].rows] == [0, 1, 3]
    assert [row_of(data, row) for row in data.heads["task_gap"].rows] == [0, 2, 3]
    assert data.source["dropped_rows"] == {
        "iou_tiny": {"iou": 1, "tokens": 1},
        "model_gap": {"tokens": 1},
        "task_gap": {"task_gap": 1, "tokens": 1},
    }


def test_tie_rule_chooses_which_tied_mask_gives_the_token():
    table = store_table([("img0", "a", "sam2.1-tiny", 0)])
    ties = pa.FixedSizeListArray.from_arrays(pa.array([0.9, 0.9, 0.2], type=pa.float32()), 3)
    table = table.set_column(table.schema.get_field_index("mask_ious"), "mask_ious", ties)
    first = load_training_data(table, ["iou_tiny"], inputs=["mask_token"], pairing="as-released")
    last = load_training_data(table, ["iou_tiny"], inputs=["mask_token"], pairing="as-released", tie_rule="last")
    assert first.features[0, 0] == 10.0  # mask token 0
    assert last.features[0, 0] == 20.0  # mask token 1
    assert (first.source["tie_rule"], last.source["tie_rule"]) == ("first", "last")


def test_each_head_searches_with_its_own_stream_and_every_trial_is_logged(token_store):
    data = load_training_data(token_store, ["iou_tiny", "iou_large"])
    lines = {name: [] for name in data.heads}
    for name in data.heads:
        tune_hyper_parameters(data, name, 2, seed=1, hidden_dim=8, log=lines[name].append)
    assert [line.split(" (")[0].split(" val")[0] for line in lines["iou_tiny"]] == [
        "tuning iou_tiny: trial 1/2",
        "tuning iou_tiny: trial 2/2",
    ]
    tried = {name: [line.split(" (")[1] for line in found] for name, found in lines.items()}
    assert tried["iou_tiny"][0] != tried["iou_large"][0]
    assert tried["iou_tiny"][1] != tried["iou_large"][1]


def write_store(root, dataset, models=("sam2.1-tiny",), images=12, change=None):
    rng = np.random.default_rng(1)
    with StoreWriter(root, rows_per_part=64) as writer:
        for image in range(images):
            rows = [
                store_row(f"img{image:03d}", f"obj{obj}", model, rng, dataset) for obj in range(2) for model in models
            ]
            for row in rows:
                if change:
                    change(image, row)
            writer.add_image(f"img{image:03d}", rows)
    return root


def test_paper_defaults_are_inferred_from_the_stores_dataset(tmp_path):
    davis = write_store(tmp_path / "davis", "davis")
    out = train_from_store(davis, tmp_path / "davis.safetensors", heads=["iou_tiny"], progress=False, recipe="paper")
    training = load_heads(out).metadata.training
    assert training["hyper_parameter_source"]["dataset"] == "davis"
    assert training["hyper_parameter_source"]["chosen_by"].startswith("inferred")
    assert training["heads"]["iou_tiny"]["hyper_parameters"] == PAPER_DEFAULTS["davis"]["iou_tiny"].to_dict()

    given = train_from_store(
        davis, tmp_path / "given.safetensors", heads=["iou_tiny"], dataset_defaults="sa-v", progress=False
    )
    assert load_heads(given).metadata.training["heads"]["iou_tiny"]["hyper_parameters"]["epochs"] == 9

    mose = write_store(tmp_path / "mose", "mose")
    with pytest.warns(TrainingWarning, match="COCO's paper hyper-parameters: the paper tuned no .* mose"):
        out = train_from_store(mose, tmp_path / "mose.safetensors", heads=["iou_tiny"], progress=False, recipe="paper")
    assert load_heads(out).metadata.training["hyper_parameter_source"]["dataset"] == "coco"


def test_cli_drops_nan_rows_with_one_warning_and_records_them(tmp_path, capsys):
    def spoil(image, row):
        if image < 2 and row["object_id"] == "obj0":
            row["iou"] = float("nan")
        row["model_gap"] = None  # one model: no model gap by design, not a bad row

    store = write_store(tmp_path / "store", "coco", change=spoil)
    out = tmp_path / "heads.safetensors"
    argv = ["train", "--data", str(store), "--out", str(out), "--no-progress", "--heads", "iou_tiny", "task_gap"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if line.startswith("usam: warning:")]
    assert len(warning_lines) == 1
    assert "iou_tiny: 2 in iou" in warning_lines[0]
    training = load_heads(out).metadata.training
    assert training["data"]["dropped_rows"] == {"iou_tiny": {"iou": 2}}
    assert training["data"]["rows"] == {"iou_tiny": 22, "task_gap": 24}


def test_cli_preset_paper_pools_sizes_with_the_last_tie_rule_and_options_win(tmp_path, capsys):
    store = write_store(tmp_path / "store", "coco", models=("sam2.1-tiny", "sam2.1-large"))
    out = tmp_path / "paper.safetensors"
    base = ["train", "--data", str(store), "--no-progress", "--heads", "iou_tiny", "iou_large"]
    assert main([*base, "--out", str(out), "--preset", "paper"]) == 0
    training = load_heads(out).metadata.training
    assert (training["preset"], training["pool_sizes"], training["tie_rule"]) == ("paper", True, "last")
    assert training["data"]["rows"] == {"iou_tiny": 48, "iou_large": 48}
    assert size_targets_of(training) is SizeTargets.POOLED

    out = tmp_path / "own.safetensors"
    assert main([*base, "--out", str(out), "--preset", "paper", "--no-pool-sizes", "--tie-rule", "first"]) == 0
    training = load_heads(out).metadata.training
    assert (training["preset"], training["pool_sizes"], training["tie_rule"]) == ("paper", False, "first")
    assert training["data"]["rows"] == {"iou_tiny": 24, "iou_large": 24}


def test_cli_hpo_prints_one_line_per_trial_without_progress(tmp_path, capsys):
    store = write_store(tmp_path / "store", "coco", images=10)
    out = tmp_path / "tuned.safetensors"
    argv = ["train", "--data", str(store), "--out", str(out), "--no-progress", "--heads", "iou_tiny", "task_gap"]
    assert main([*argv, "--hpo", "2"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tuning ")]
    assert [line.split(" val")[0] for line in lines] == [
        "tuning iou_tiny: trial 1/2",
        "tuning iou_tiny: trial 2/2",
        "tuning task_gap: trial 1/2",
        "tuning task_gap: trial 2/2",
    ]
    assert all("lr " in line and "batch_size " in line for line in lines)
