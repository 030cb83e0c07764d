"""Tests for usam.store.StoreReader: what a store holds, batched reads, tokens, manifests, image names."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_store_writer import make_row

from usam.errors import InvalidInputError, StoreError
from usam.store import (
    KEY_COLUMNS,
    SIGNAL_COLUMNS,
    STORE_FILE_NAME,
    StoreReader,
    StoreWriter,
    image_names,
    row_schema,
)


def _write(root, rows_by_image, **writer_options):
    with StoreWriter(root, rows_per_part=2, **writer_options) as writer:
        for image_key, rows in rows_by_image.items():
            writer.add_image(image_key, rows)


def _small_row(image_key, object_id, model, *, token_dim, num_mask_tokens, dataset="coco"):
    """A row of a store with non-default token sizes."""
    rng = np.random.default_rng(0)
    strings = {"image_key": image_key, "object_id": object_id, "model": model, "dataset": dataset, "split": "val"}
    row = {}
    for field in row_schema(token_dim=token_dim, num_mask_tokens=num_mask_tokens):
        if pa.types.is_string(field.type):
            row[field.name] = strings[field.name]
        elif pa.types.is_fixed_size_list(field.type):
            row[field.name] = rng.standard_normal(field.type.list_size).astype(np.float32)
        elif pa.types.is_integer(field.type):
            row[field.name] = 10
        else:
            row[field.name] = 0.5
    return row


@pytest.fixture
def store(tmp_path):
    rows = {
        "a": [make_row("a", "o1", "sam2.1-tiny", seed=1), make_row("a", "o1", "sam2.1-large", seed=2)],
        "b": [make_row("b", "o1", "sam2.1-tiny", seed=3)],
        "c": [],
    }
    _write(tmp_path, rows, metadata={"dataset": "coco", "split": "val"})
    return tmp_path


def test_reader_reports_what_the_store_holds(store):
    reader = StoreReader(store)
    assert reader.models() == ["sam2.1-large", "sam2.1-tiny"]
    assert reader.datasets() == ["coco"]
    assert reader.num_rows == 3
    assert reader.token_dim == 256
    assert reader.num_mask_tokens == 4
    assert reader.columns == row_schema().names
    assert reader.metadata["metadata"] == {"dataset": "coco", "split": "val"}
    assert reader.options == {"dataset": "coco", "split": "val"}
    assert reader.metadata == json.loads((store / STORE_FILE_NAME).read_text())
    assert set(KEY_COLUMNS) <= set(reader.columns)


def test_iter_batches_reads_every_row_once_in_bounded_tables(store):
    reader = StoreReader(store)
    tables = list(reader.iter_batches(["image_key", "model", "iou_token"], batch_rows=1))
    assert [table.num_rows for table in tables] == [1, 1, 1]
    assert all(table.column_names == ["image_key", "model", "iou_token"] for table in tables)
    keys = sorted((table["image_key"][0].as_py(), table["model"][0].as_py()) for table in tables)
    assert keys == [("a", "sam2.1-large"), ("a", "sam2.1-tiny"), ("b", "sam2.1-tiny")]
    tiny = pc.field("model") == "sam2.1-tiny"
    assert sum(table.num_rows for table in reader.iter_batches(["model"], filter=tiny)) == 2
    assert reader.count_rows(tiny) == 2
    assert reader.read(["model"], filter=tiny).num_rows == 2


def test_unknown_column_is_a_store_error(store):
    reader = StoreReader(store)
    with pytest.raises(StoreError, match=r"no column.*nope"):
        list(reader.iter_batches(["model", "nope"]))
    with pytest.raises(StoreError, match="nope"):
        reader.read(["nope"])


def test_reading_errors_become_store_errors(store):
    reader = StoreReader(store)
    part = sorted(store.glob("part-*.parquet"))[0]
    data = part.read_bytes()
    # Damage the data pages but keep the footer, so opening succeeds and reading fails.
    part.write_bytes(data[:4] + bytes(len(data) // 2) + data[4 + len(data) // 2 :])
    with pytest.raises(StoreError):
        list(reader.iter_batches(["iou_token", "mask_tokens"]))


def test_tokens_take_their_sizes_from_the_store(tmp_path):
    rows = [_small_row("img", "o", "sam2.1-tiny", token_dim=8, num_mask_tokens=3)]
    _write(tmp_path, {"img": rows}, token_dim=8, num_mask_tokens=3)
    reader = StoreReader(tmp_path)
    assert (reader.token_dim, reader.num_mask_tokens) == (8, 3)
    table = reader.read(["iou_token", "mask_tokens"])
    assert reader.tokens(table, "iou_token").shape == (1, 8)
    mask_tokens = reader.tokens(table, "mask_tokens", np.float64)
    assert mask_tokens.shape == (1, 3, 8)
    assert mask_tokens.dtype == np.float64
    np.testing.assert_allclose(mask_tokens.reshape(-1), np.asarray(rows[0]["mask_tokens"]), rtol=1e-6)


def test_writer_refuses_other_token_sizes_than_the_store(tmp_path):
    _write(tmp_path, {}, token_dim=8, num_mask_tokens=3)
    with pytest.raises(StoreError, match="token_dim 8"):
        StoreWriter(tmp_path)


def test_manifests_and_info(store):
    reader = StoreReader(store)
    manifests = reader.manifests()
    assert list(manifests) == ["00000-of-00001"]
    assert manifests["00000-of-00001"].image_keys == ("a", "b", "c")
    assert manifests["00000-of-00001"].completed_images == 3
    info = reader.info()
    assert info["num_rows"] == 3
    assert info["num_empty_images"] == 1
    assert info["completed_images_per_shard"] == {"00000-of-00001": 3}
    assert sum(part["num_rows"] for part in info["parts"]) == 3
    assert info["token_dim"] == 256


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"shard_index": "0", "num_shards": 1}'])
def test_corrupt_manifest_is_one_line_store_error_naming_the_file(store, content):
    path = store / "_manifest-00000-of-00001.json"
    path.write_text(content)
    with pytest.raises(StoreError, match=r"_manifest-00000-of-00001\.json") as caught:
        StoreReader(store).manifests()
    assert "\n" not in str(caught.value)


def test_missing_and_newer_stores_are_refused(tmp_path, store):
    with pytest.raises(StoreError, match="does not exist"):
        StoreReader(tmp_path / "nowhere")
    content = json.loads((store / STORE_FILE_NAME).read_text())
    content["schema_version"] = 99
    (store / STORE_FILE_NAME).write_text(json.dumps(content))
    with pytest.raises(StoreError, match="schema version 99"):
        StoreReader(store)


def test_image_names_join_dataset_and_key():
    names = image_names(pa.chunked_array([["coco"], ["ade20k"]]), np.array(["1", "1"]))
    assert names.tolist() == ["coco/1", "ade20k/1"]
    assert len(set(names.tolist())) == 2  # one key in two datasets is two images


def _make_version_1(store):
    """Rewrite a store as usam wrote it before schema version 2 (no signal columns)."""
    old_schema = row_schema(schema_version=1)
    for path in sorted(store.glob("part-*.parquet")):
        table = pq.read_table(path).select(old_schema.names)
        pq.write_table(pa.Table.from_arrays(table.columns, schema=old_schema), path)
    content = json.loads((store / STORE_FILE_NAME).read_text())
    content["schema_version"] = 1
    (store / STORE_FILE_NAME).write_text(json.dumps(content))


def test_version_1_store_reads_without_signals_and_says_how_to_get_them(store):
    before = StoreReader(store).read(["image_key", "model", "iou", "iou_token"]).sort_by("model")
    _make_version_1(store)
    reader = StoreReader(store)
    assert reader.schema_version == 1
    assert not set(SIGNAL_COLUMNS) & set(reader.columns)
    after = reader.read(["image_key", "model", "iou", "iou_token"]).sort_by("model")
    assert after.equals(before)
    with pytest.raises(StoreError, match=r"schema version 1.*token_stabilities.*usam extract") as caught:
        reader.read(["iou", "token_stabilities"])
    assert "\n" not in str(caught.value)
    with pytest.raises(StoreError, match=r"training heads that read signals needs"):
        reader.check_columns(["object_score_logit"], "training heads that read signals")
    # Rows with signals cannot join it: a new extraction goes into a new directory.
    with pytest.raises(StoreError, match=r"schema version 1.*new --out directory"):
        StoreWriter(store, metadata={"dataset": "coco", "split": "val"})


def test_signal_columns_hold_one_value_per_mask_token(tmp_path):
    schema = row_schema(num_mask_tokens=4)
    assert schema.field("token_sam_scores").type.list_size == 4
    assert schema.field("object_score_logit").type == pa.float32()
    assert not schema.field("token_entropies").nullable
    with pytest.raises(InvalidInputError, match="schema_version"):
        row_schema(schema_version=3)
